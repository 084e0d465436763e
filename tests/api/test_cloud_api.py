"""The cloud fallback through a real daemon (real HTTP over its Unix socket) and the CLI, with the stand-in
cloud (llama_cpp.server on loopback, qwen2.5-coder-0.5b) configured by environment only; and the key kept out
of every worker's environment and arguments, every response, the log and the audit file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.api.conftest import SWARM_EDGE, Daemon, private_root
from tests.conftest import STANDIN_KEY

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def cloud_daemon(api_config, standin):
    env = {"SWARM_EDGE_CLOUD_URL": standin.url, "SWARM_EDGE_CLOUD_MODEL": "stand-in",
           "SWARM_EDGE_CLOUD_API_KEY": STANDIN_KEY}
    root = private_root()
    d = Daemon(root, api_config, env=env, offline=False).start()
    yield d
    assert d.stop() == 0, d.output()
    shutil.rmtree(root, ignore_errors=True)


def _sse(text: str) -> list:
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_openai_streaming_through_the_cloud(cloud_daemon):
    body = {"model": "cloud", "stream": True, "max_tokens": 24, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "I am bob@example.org. Greet me in one short sentence."}]}
    r = cloud_daemon.http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = _sse(r.text)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c.get("choices"))
    assert text.strip() and sum(1 for c in chunks if c.get("choices") and c["choices"][0]["delta"].get("content")) > 1
    assert all(c["model"] == "cloud:stand-in" for c in chunks)
    trace = next(c["swarm"] for c in reversed(chunks) if "swarm" in c)
    assert trace["left_device"] is True and trace["route"]["target"] == "cloud"
    assert trace["escalation"]["redacted"] == {"EMAIL": 1} and trace["escalation"]["outcome"] == "answered"


def test_ollama_chat_with_model_cloud(cloud_daemon):
    r = cloud_daemon.http.post("/api/chat", json={"model": "cloud", "stream": False, "options": {"num_predict": 12},
                                                  "messages": [{"role": "user", "content": "Say hi."}]})
    assert r.status_code == 200, r.text
    assert r.json()["message"]["content"].strip() and r.json()["model"] == "cloud:stand-in"


def test_allow_cloud_false_and_offline_keep_the_request_on_the_device(cloud_daemon):
    body = {"model": "cloud", "max_tokens": 6, "allow_cloud": False, "messages": [{"role": "user", "content": "hi"}]}
    r = cloud_daemon.http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["model"] == "smollm2-135m" and d["swarm"]["left_device"] is False
    assert d["swarm"]["escalation"]["outcome"] == "stayed on the device: the request says allow_cloud: false"
    r = cloud_daemon.http.post("/v1/chat/completions", json={**body, "allow_cloud": True, "offline": True})
    assert r.status_code == 400 and "contradict" in r.json()["error"]["message"]
    r = cloud_daemon.http.post("/v1/chat/completions", json={**body, "allow_cloud": "sometimes"})
    assert r.status_code == 400 and "allow_cloud" in r.json()["error"]["message"]


def test_models_and_status_show_the_cloud(cloud_daemon):
    ids = [m["id"] for m in cloud_daemon.http.get("/v1/models").json()["data"]]
    assert "cloud" in ids
    status = cloud_daemon.status()
    assert status["cloud"]["model"] == "stand-in" and status["cloud"]["breaker"] == "closed"
    metrics = cloud_daemon.http.get("/metrics").text
    assert 'swarm_edge_cloud_calls_total{outcome="ok"}' in metrics and "swarm_edge_cloud_circuit_open 0" in metrics


def _cli(args, daemon=None, **env):
    full = {**os.environ, "SWARM_EDGE_THREADS": "2", **env}
    if daemon is not None:
        full.update(SWARM_EDGE_SOCKET=str(daemon.socket), SWARM_EDGE_HOME=str(daemon.home))
    out = subprocess.run([SWARM_EDGE, *args], capture_output=True, text=True, env=full, timeout=300)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def test_cli_ask_model_cloud_through_the_daemon_and_offline_refusals(cloud_daemon, standin, api_config, tmp_path):
    out = _cli(["ask", "--model", "cloud", "--max-tokens", "12", "Say hi to alice@example.com"], cloud_daemon)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() and "-- cloud:stand-in" in out.stderr
    assert "-- cloud: requested by the caller" in out.stderr and "redacted before sending: EMAIL x1" in out.stderr
    out = _cli(["ask", "--offline", "--model", "cloud", "hi"], cloud_daemon)
    assert out.returncode != 0 and "contradict" in out.stderr
    env = {"SWARM_EDGE_CLOUD_URL": standin.url, "SWARM_EDGE_CLOUD_MODEL": "stand-in",
           "SWARM_EDGE_HOME": str(tmp_path / "home")}
    out = _cli(["ask", "--local", "--offline", "--config", str(api_config), "--model", "cloud", "hi"], **env)
    assert out.returncode == 2 and "the cloud fallback is off here (offline" in out.stderr


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def test_the_key_is_in_no_worker_no_response_no_log(cloud_daemon):
    r = cloud_daemon.http.post("/v1/chat/completions", json={"model": "smollm2-135m", "max_tokens": 4,
                                                             "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    r2 = cloud_daemon.http.post("/v1/chat/completions", json={"model": "cloud", "max_tokens": 4,
                                                              "messages": [{"role": "user", "content": "hi"}]})
    assert r2.status_code == 200
    kids = _descendants(cloud_daemon.proc.pid)
    assert len(kids) >= 2  # the forkserver and at least the smollm2 worker
    for p in kids:
        environ = Path(f"/proc/{p.pid}/environ").read_bytes()
        cmdline = Path(f"/proc/{p.pid}/cmdline").read_bytes()
        assert STANDIN_KEY.encode() not in environ and b"SWARM_EDGE_CLOUD_API_KEY" not in environ, p.cmdline()
        assert STANDIN_KEY.encode() not in cmdline
    assert STANDIN_KEY.encode() not in Path(f"/proc/{cloud_daemon.proc.pid}/cmdline").read_bytes()
    seen = [r.text, r2.text, cloud_daemon.http.get("/swarm/status").text, cloud_daemon.http.get("/v1/models").text,
            cloud_daemon.http.get("/metrics").text, cloud_daemon.output()]
    audit = cloud_daemon.home / "audit" / "cloud.jsonl"
    seen.append(audit.read_text())
    assert all(STANDIN_KEY not in s for s in seen)
    assert oct(audit.stat().st_mode & 0o777) == "0o600"


def _memory_holds(pid: int, needle: bytes) -> bool:
    """Whether any readable mapping of process `pid` contains `needle` (root, or our own dumpable process)."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r") or line.rstrip().endswith(("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            if chunk and needle in chunk:
                return True
    return False


def test_the_process_that_parses_model_files_never_holds_the_key(cloud_daemon):
    """DESIGN.md: no process that parses a model file holds the cloud key. The daemon (it reads GGUF headers for
    admission, and runs the router's ONNX embedder when one is configured) re-executed itself without the key; the
    egress process holds it and maps no model file and no model runtime."""
    r = cloud_daemon.http.post("/v1/chat/completions", json={"model": "cloud", "max_tokens": 4,
                                                             "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.json()["swarm"]["left_device"] is True  # the key reached the cloud
    pid = cloud_daemon.proc.pid
    key = STANDIN_KEY.encode()
    assert b"SWARM_EDGE_CLOUD_API_KEY" not in Path(f"/proc/{pid}/environ").read_bytes()
    assert not _memory_holds(pid, key)
    egress = [p for p in _descendants(pid) if "swarm_edge.egress" in " ".join(p.cmdline())]
    assert len(egress) == 1, [p.cmdline() for p in _descendants(pid)]
    theirs = Path(f"/proc/{egress[0].pid}/maps").read_text()
    assert not any(s in theirs for s in (".gguf", ".onnx", "libllama", "onnxruntime")), theirs
    assert _memory_holds(egress[0].pid, key)  # the test can see a key where there is one
    pss = egress[0].memory_full_info().pss
    print(f"egress process PSS: {pss / 2**20:.1f} MiB")
    assert pss < 128 << 20
