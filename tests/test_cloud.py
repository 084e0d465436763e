"""The cloud client against a real loopback HTTP server that misbehaves on purpose (tests/cloudkit.py):
redaction of what is sent, restoration of what comes back, deadlines, retries, Retry-After, the circuit
breaker, the audit log, and the key kept out of everything but one header."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import time

import pytest

from swarm_edge.cloud import (
    CloudClient,
    CloudConfig,
    backoff_delay,
    load_key,
    make_client,
    retry_after_seconds,
)
from swarm_edge.config import Settings
from swarm_edge.errors import CloudUnavailableError, ConfigError
from swarm_edge.registry import CloudSpec
from tests.cloudkit import Misbehaving, collect, free_port, run
from tests.planted import ITEMS

KEY = "sk-test-" + "k3y" * 12
USER = [{"role": "user", "content": "hello"}]


@pytest.fixture()
def server():
    s = Misbehaving()
    yield s
    s.close()


def client_for(url: str, tmp_path, *, key: str | None = KEY, rng=lambda: 0.0, **over) -> CloudClient:
    cfg = CloudConfig(base_url=url, model="stand-in", **{"connect_timeout_s": 2.0, "read_timeout_s": 5.0,
                                                         "total_timeout_s": 20.0, **over})
    return CloudClient(cfg, key, tmp_path / "audit" / "cloud.jsonl", rng=rng)


def audit_lines(tmp_path) -> list[dict]:
    path = tmp_path / "audit" / "cloud.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def _drive(client, messages, **kw):
    try:
        return await collect(client, messages, **kw)
    finally:
        await client.aclose()


def test_every_planted_item_is_redacted_before_sending_and_restored_in_the_answer(server, tmp_path):
    text = "Please keep these safe:\n" + "\n".join(s for _, _, s in ITEMS)
    client = client_for(server.url, tmp_path)
    answer, res = run(_drive(client, [{"role": "system", "content": "contact ops@example.com"},
                                      {"role": "user", "content": text}]))
    received = server.requests[0]["body"].decode()
    leaked = [(k, v) for k, v, _ in ITEMS if v in received or json.dumps(v)[1:-1] in received]
    assert leaked == []                                   # 100% of the planted items removed from what was sent
    assert "ops@example.com" not in received              # system messages too
    assert answer == text                                 # the echo comes back with every original restored
    assert sum(res.redacted.values()) == len(ITEMS) + 1
    assert set(res.redacted) == {k for k, _, _ in ITEMS}
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"


def test_one_call_per_kind_each_audited_without_key_or_raw_prompt(server, tmp_path):
    client = client_for(server.url, tmp_path)

    async def go():
        try:
            for kind, _, sentence in ITEMS[::9]:
                answer, res = await collect(client, [{"role": "user", "content": sentence}], reason=f"kind {kind}")
                assert answer == sentence and res.redacted == {kind: 1}
        finally:
            await client.aclose()

    run(go())
    lines = audit_lines(tmp_path)
    assert len(lines) == len(ITEMS[::9]) == len(server.requests)
    path = tmp_path / "audit" / "cloud.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_text()
    assert KEY not in raw and not any(v in raw for _, v, _ in ITEMS)
    for line, req, (kind, _, _) in zip(lines, server.requests, ITEMS[::9], strict=True):
        assert line["reason"] == f"kind {kind}" and line["redacted"] == {kind: 1}
        assert line["bytes_sent"] == len(req["body"])
        assert line["request_sha256"] == hashlib.sha256(req["body"]).hexdigest()
        assert line["outcome"] == "ok" and line["host"].startswith("127.0.0.1:")


def test_500s_are_retried_twice_then_reported(server, tmp_path):
    server.mode = "500"
    client = client_for(server.url, tmp_path)
    with pytest.raises(CloudUnavailableError, match=r"HTTP 500 .*after 3 attempts"):
        run(_drive(client, USER))
    assert len(server.requests) == 3
    assert audit_lines(tmp_path)[0]["statuses"] == [500, 500, 500]


def test_a_500_then_an_answer(server, tmp_path):
    server.mode = "500-once"
    answer, res = run(_drive(client_for(server.url, tmp_path), USER))
    assert answer == "hello" and res.attempts == 2 and res.statuses == [500, 200]


def test_429_retry_after_is_honoured(server, tmp_path):
    server.mode, server.retry_after = "429-once", "1"
    answer, res = run(_drive(client_for(server.url, tmp_path), USER))
    assert answer == "hello" and res.statuses == [429, 200]
    gap = server.requests[1]["t"] - server.requests[0]["t"]
    assert gap >= 0.95, gap  # the jitter alone (rng=0) would have retried at once


def test_retry_after_longer_than_the_deadline_gives_up_at_once(server, tmp_path):
    server.mode, server.retry_after = "429", "3600"
    t0 = time.monotonic()
    with pytest.raises(CloudUnavailableError, match="no time left for a retry"):
        run(_drive(client_for(server.url, tmp_path), USER))
    assert time.monotonic() - t0 < 5 and len(server.requests) == 1


def test_4xx_is_not_retried_and_the_key_is_scrubbed_from_the_error(server, tmp_path):
    server.mode = "401-leak"
    with pytest.raises(CloudUnavailableError) as err:
        run(_drive(client_for(server.url, tmp_path), USER))
    assert len(server.requests) == 1
    assert "HTTP 401" in str(err.value) and KEY not in str(err.value) and "[key]" in str(err.value)
    assert KEY not in (tmp_path / "audit" / "cloud.jsonl").read_text()


def test_read_timeout_on_a_server_that_never_answers(server, tmp_path):
    server.mode = "hang"
    t0 = time.monotonic()
    with pytest.raises(CloudUnavailableError, match="read timeout"):
        run(_drive(client_for(server.url, tmp_path, read_timeout_s=0.5), USER))
    elapsed = time.monotonic() - t0
    assert len(server.requests) == 3 and 1.4 < elapsed < 5, elapsed


def test_total_deadline_ends_a_trickle_that_read_timeouts_never_catch(server, tmp_path):
    server.mode = "trickle"
    t0 = time.monotonic()
    with pytest.raises(CloudUnavailableError, match="total deadline of 1.5 s"):
        run(_drive(client_for(server.url, tmp_path, read_timeout_s=1.0, total_timeout_s=1.5), USER))
    assert 1.4 < time.monotonic() - t0 < 3


def test_connection_refused_is_unavailable_and_nothing_left_the_device(tmp_path):
    client = client_for(f"http://127.0.0.1:{free_port()}/v1", tmp_path)
    with pytest.raises(CloudUnavailableError, match="cannot connect"):
        run(_drive(client, USER))
    assert audit_lines(tmp_path) == []


def test_circuit_breaker_opens_fails_fast_and_probes_after_the_reset(server, tmp_path):
    server.mode = "500"
    client = client_for(server.url, tmp_path, retries=0, breaker_failures=2, breaker_reset_s=1.0)

    async def go():
        try:
            for _ in range(2):
                with pytest.raises(CloudUnavailableError, match="HTTP 500"):
                    await collect(client, USER)
            assert client.breaker.state == "open"
            t0 = time.monotonic()
            with pytest.raises(CloudUnavailableError, match="circuit open") as err:
                await collect(client, USER)
            assert err.value.breaker and time.monotonic() - t0 < 0.05
            assert len(server.requests) == 2  # the open circuit sent nothing
            await asyncio.sleep(1.05)
            assert client.breaker.state == "half-open"
            with pytest.raises(CloudUnavailableError, match="HTTP 500"):  # the probe fails: open again
                await collect(client, USER)
            assert client.breaker.state == "open" and len(server.requests) == 3
            await asyncio.sleep(1.05)
            server.mode = "echo"
            answer, _ = await collect(client, USER)  # the probe succeeds: closed
            assert answer == "hello" and client.breaker.state == "closed"
        finally:
            await client.aclose()

    run(go())


def test_backoff_and_retry_after_parsing():
    assert backoff_delay(0, rng=lambda: 1.0) == 0.5 and backoff_delay(3, rng=lambda: 1.0) == 4.0
    assert backoff_delay(10, rng=lambda: 1.0) == 8.0 and backoff_delay(2, rng=lambda: 0.0) == 0.0
    assert retry_after_seconds("7") == 7.0 and retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert 59 <= retry_after_seconds(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))) <= 61


# ---------------------------------------------------------------- configuration and the key


def test_off_unless_configured_and_never_built_offline(tmp_path, monkeypatch, test_registry):
    monkeypatch.delenv("SWARM_EDGE_CLOUD_URL", raising=False)
    assert make_client(test_registry, Settings.load(home=tmp_path)) is None
    env = {"SWARM_EDGE_CLOUD_URL": "http://127.0.0.1:9/v1", "SWARM_EDGE_CLOUD_MODEL": "m"}
    assert make_client(test_registry, Settings.load(home=tmp_path, environ=env, offline=True)) is None
    with pytest.raises(ConfigError, match="half configured: SWARM_EDGE_CLOUD_MODEL"):
        make_client(test_registry, Settings.load(home=tmp_path, environ={"SWARM_EDGE_CLOUD_URL": "http://x/v1"}))
    with pytest.raises(ConfigError, match="must start with http"):
        make_client(test_registry, Settings.load(home=tmp_path, environ={**env, "SWARM_EDGE_CLOUD_URL": "ftp://x"}))
    c = make_client(test_registry, Settings.load(home=tmp_path, environ=env))
    assert c is not None and c.config.model == "m"
    run(c.aclose())
    test_registry.offline = True  # `offline: true` in models.yaml
    assert make_client(test_registry, Settings.load(home=tmp_path, environ=env)) is None


def test_key_from_env_is_removed_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SWARM_EDGE_CLOUD_API_KEY", KEY)
    env = dict(os.environ)
    cfg = CloudConfig.resolve(None, {"SWARM_EDGE_CLOUD_URL": "http://127.0.0.1:9/v1", "SWARM_EDGE_CLOUD_MODEL": "m"})
    assert load_key(cfg, env) == KEY
    assert "SWARM_EDGE_CLOUD_API_KEY" not in os.environ and "SWARM_EDGE_CLOUD_API_KEY" not in env
    c = CloudClient(cfg, KEY, tmp_path / "a.jsonl")
    assert KEY not in repr(c) and KEY not in repr(cfg)
    run(c.aclose())


def test_key_file_must_be_0600_and_ours(tmp_path):
    f = tmp_path / "key"
    f.write_text(KEY + "\n")
    spec = CloudSpec(base_url="http://127.0.0.1:9/v1", model="m", api_key_file=str(f))
    cfg = CloudConfig.resolve(spec, {})
    f.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_key(cfg, {})
    f.chmod(0o600)
    assert load_key(cfg, {}) == KEY
    f.unlink()
    with pytest.raises(ConfigError, match="No such file"):
        load_key(cfg, {})


def test_audit_log_that_cannot_be_written_means_nothing_is_sent(server, tmp_path):
    (tmp_path / "audit").write_text("a file where the audit directory should be")
    with pytest.raises(CloudUnavailableError, match="not sending: the audit log"):
        run(_drive(client_for(server.url, tmp_path), USER))
    assert server.requests == []


# ---------------------------------------------------------------- answers that are not a token stream


def test_a_plain_json_completion_is_accepted_and_restored(server, tmp_path):
    """Some OpenAI-compatible proxies ignore `stream`: their one JSON completion is the answer, never an empty one."""
    server.mode = "json"
    answer, res = run(_drive(client_for(server.url, tmp_path), [{"role": "user", "content": "mail ann@example.org"}]))
    assert "ann@example.org" not in server.requests[0]["body"].decode()
    assert answer == "mail ann@example.org" and res.finish_reason == "stop"
    assert res.usage["completion_tokens"] == 5 and res.tokens == 5 and res.ttft_s is not None
    assert audit_lines(tmp_path)[0]["outcome"] == "ok"


@pytest.mark.parametrize("mode, why", [("json-error", "with an error: stand-in error"),
                                       ("json-empty", "without answer text"),
                                       ("sse-empty", "streamed no answer text")])
def test_an_http_200_without_answer_text_is_a_failure_not_an_empty_success(server, tmp_path, mode, why):
    server.mode = mode
    with pytest.raises(CloudUnavailableError, match=why):
        run(_drive(client_for(server.url, tmp_path, retries=0), USER))
    assert audit_lines(tmp_path)[0]["outcome"] != "ok"


def test_max_tokens_is_a_cap_not_a_default(server, tmp_path):
    async def go():
        client = client_for(server.url, tmp_path, max_tokens=100)
        try:
            for asked in (None, 50, 5000):
                await collect(client, USER, max_tokens=asked)
        finally:
            await client.aclose()
    run(go())
    assert [b["max_tokens"] for b in server.bodies()] == [100, 50, 100]


@pytest.mark.parametrize("url, ok", [("http://api.example.com/v1", False), ("http://10.0.0.5:8000/v1", False),
                                     ("http://user:pw@api.example.com/v1", False), ("http://127.0.0.1:8/v1", True),
                                     ("http://127.9.9.9/v1", True), ("http://localhost:8080/v1", True),
                                     ("http://[::1]:8/v1", True), ("https://api.example.com/v1", True)])
def test_plain_http_only_to_this_machine(url, ok):
    env = {"SWARM_EDGE_CLOUD_URL": url, "SWARM_EDGE_CLOUD_MODEL": "m"}
    if ok:
        assert CloudConfig.resolve(None, env).base_url == url.rstrip("/")
    else:
        with pytest.raises(ConfigError, match="clear text"):
            CloudConfig.resolve(None, env)


def test_the_key_leaves_this_process_for_the_egress_process(tmp_path):
    """/proc/PID/environ shows the block a process started with: popping the variable is not enough. The key goes to
    the egress process (egress.py) over its socket: neither process shows it in its environment or arguments."""
    import subprocess
    import sys

    code = ("import os, sys, time\n"
            "from swarm_edge.cloud import make_client\n"
            "from swarm_edge.config import Settings\n"
            "from types import SimpleNamespace\n"
            "reg = SimpleNamespace(offline=False, cloud=None)  # what make_client reads of a registry\n"
            "c = make_client(reg, Settings.load(home=sys.argv[1]))\n"
            "assert type(c).__name__ == 'EgressClient' and c.pid == 0, c  # started by the first call\n"
            "import asyncio\n"
            "from swarm_edge.cloud import CloudResult\n"
            "async def call():\n"
            "    try:\n"
            "        async for _ in c.stream_chat([{'role': 'user', 'content': 'hi'}], reason='test'):\n"
            "            pass\n"
            "    except Exception as exc:  # nothing listens on port 9: the egress tried and said so\n"
            "        assert 'cannot connect' in str(exc), exc\n"
            "    assert c.pid not in (0, os.getpid())\n"
            "    key = sys.argv[2].encode()\n"
            "    mine = open('/proc/self/environ', 'rb').read().count(key)\n"
            "    theirs = [open(f'/proc/{c.pid}/{n}', 'rb').read().count(key) for n in ('environ', 'cmdline')]\n"
            "    alive = open(f'/proc/{c.pid}/cmdline', 'rb').read().count(b'swarm_edge.egress')\n"
            "    print(mine, *theirs, alive, 'SWARM_EDGE_CLOUD_API_KEY' in os.environ)\n"
            "    await c.aclose()\n"
            "asyncio.run(call())\n")
    env = {**os.environ, "SWARM_EDGE_CLOUD_API_KEY": KEY,
           "SWARM_EDGE_CLOUD_URL": "http://127.0.0.1:9/v1", "SWARM_EDGE_CLOUD_MODEL": "m"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), KEY], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "0", "0", "1", "False"]
