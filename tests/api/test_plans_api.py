"""Routing and plans through a real daemon: model "auto" and "pipeline:NAME" over the socket (openai SDK),
POST /swarm/route, and `swarm-edge route` / `ask` on the command line (through the daemon and in-process)."""

from __future__ import annotations

import contextlib
import json
import time

import httpx2
import openai
import pytest

from tests.api.conftest import serve, until_built
from tests.api.test_cli_daemon import _run

pytestmark = pytest.mark.real_model

REWRITE = "Rewrite this more politely: close the door now."


@pytest.fixture(scope="module")
def swarm_daemon(swarm_config):
    for d in serve(swarm_config):
        # the daemon trains the router's head in the background at start; until then routes come from the rules
        # (and say so): these tests are about the semantic router, so they begin once it is built
        until_built(d)
        yield d


@pytest.fixture(scope="module")
def sdk(swarm_daemon):
    http = httpx2.Client(transport=httpx2.HTTPTransport(uds=str(swarm_daemon.socket)), timeout=300)
    yield openai.OpenAI(base_url="http://swarm-edge/v1", api_key="not-needed", http_client=http, max_retries=0)
    http.close()


def test_models_list_the_router_and_pipelines(sdk):
    models = {m.id: m.model_extra["swarm"] for m in sdk.models.list()}
    assert models["auto"]["router"] == "semantic"
    assert models["pipeline:polish"] == {"kind": "pipeline", "steps": ["rewrite", "chat"], "description": ""}


def test_swarm_route_explains_without_generating(swarm_daemon):
    http = swarm_daemon.http
    r = http.post("/swarm/route", json={"prompt": REWRITE})
    assert r.status_code == 200
    route = r.json()
    assert route["task"] == "rewrite" and route["model"] == "smollm2-135m" and route["target"] == "local"
    assert route["reason"].startswith("the trained head says 'rewrite'")
    assert abs(sum(route["scores"].values()) - 1) < 1e-3 and route["confidence"] == max(route["scores"].values())
    assert http.get("/swarm/status").json()["residents"] == []  # routing loaded no generation model
    bad = http.post("/swarm/route", json={"text": "hi"})
    assert bad.status_code == 400 and "prompt" in bad.json()["error"]["message"]


def test_auto_runs_the_plan_and_reports_every_step(sdk):
    messages = [{"role": "user", "content": REWRITE}]
    fresh = {"cache_prompt": False}  # both answers evaluate their prompts afresh: the same greedy text is promised
    full = sdk.chat.completions.create(model="auto", messages=messages, max_tokens=24, temperature=0, extra_body=fresh)
    swarm = full.model_extra["swarm"]
    assert swarm["plan"] == "cascade" and swarm["route"]["task"] == "rewrite"
    assert swarm["steps"][0]["model"] == "smollm2-135m" and swarm["steps"][0]["role"] == "cascade"
    assert "mean_logprob" in swarm["steps"][0] and full.model == swarm["model"]
    text = full.choices[0].message.content
    stream = list(sdk.chat.completions.create(model="auto", messages=messages, max_tokens=24, temperature=0,
                                              stream=True, extra_body=fresh))
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text  # same plan, same answer
    final = next(c for c in stream if c.choices and c.choices[0].finish_reason)

    def shape(steps):
        return [(s["model"], s["role"], s.get("accepted")) for s in steps]
    assert shape(final.model_extra["swarm"]["steps"]) == shape(swarm["steps"])


def test_pipeline_by_name(sdk):
    r = sdk.chat.completions.create(model="pipeline:polish", messages=[{"role": "user", "content": "give me the keys"}],
                                    max_tokens=16)
    swarm = r.model_extra["swarm"]
    assert swarm["plan"] == "pipeline" and [s["subtask"] for s in swarm["steps"]][-1] == 2
    with pytest.raises(openai.NotFoundError, match="unknown pipeline 'nope'"):
        sdk.chat.completions.create(model="pipeline:nope", messages=[{"role": "user", "content": "x"}])


def test_route_command_through_the_daemon_and_in_process(swarm_daemon, swarm_config):
    prompts = "Hi! How are you today?\nWhat is 12 times 7?\n" + REWRITE + "\n"
    via = _run(["route", "-"], swarm_daemon, stdin=prompts)
    local = _run(["route", "-", "--local", "--config", str(swarm_config)], swarm_daemon, stdin=prompts)
    for out in (via, local):
        assert out.returncode == 0, out.stderr
        lines = [json.loads(x) for x in out.stdout.splitlines()]
        assert [r["task"] for r in lines] == ["chat", "math", "rewrite"]
        assert all(r["reason"].startswith("the trained head says") for r in lines)
    one = _run(["route", REWRITE], swarm_daemon)
    assert one.returncode == 0 and one.stdout.startswith("task rewrite -> smollm2-135m (local), confidence")


def test_ask_shows_the_plan(swarm_daemon):
    out = _run(["ask", "--json", REWRITE], swarm_daemon)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["via"] == "daemon" and answer["plan"] == "cascade" and answer["steps"]
    plain = _run(["ask", "--model", "pipeline:polish", "give me the keys"], swarm_daemon)
    assert plain.returncode == 0 and "plan pipeline: rewrite:smollm2-135m" in plain.stderr


@contextlib.contextmanager
def _seeded(swarm_daemon, swarm_config, env=None):
    """A second daemon whose home has the first one's trained head (its cache), nothing else; routing is semantic
    once its embedder's worker is up."""
    import shutil

    from tests.api.conftest import Daemon, private_root

    root = private_root()
    shutil.copytree(swarm_daemon.home / "cache", root / "home" / "cache")
    d = Daemon(root, swarm_config, env=env).start()
    try:
        until_built(d)
        yield d
    finally:
        assert d.stop() == 0, d.output()
        shutil.rmtree(root, ignore_errors=True)


def _reasons(d, prompt: str, n: int) -> list[str]:
    return [d.http.post("/swarm/route", json={"prompt": prompt}).json()["reason"] for _ in range(n)]


def test_the_daemon_routes_as_the_in_process_router_and_never_imports_numpy(swarm_daemon, swarm_config):
    """The daemon's router worker keeps the trained head and answers a prompt's task probabilities (router_host.py),
    so a daemon that finds its head cached never imports numpy (~10 MiB of PSS it would keep for good). The numbers
    are the in-process router's (same features, same head, same float32 arithmetic): equal to the 4 decimals a
    Route carries. A killed router worker costs one prompt (the rules answer it), then a new one routes."""
    from pathlib import Path

    from swarm_edge.config import Settings
    from swarm_edge.registry import load_registry
    from swarm_edge.router_host import local_router
    from tests.api.conftest import wait_for, worker_processes

    prompts = [REWRITE, "Hi! How are you today?", "Fix the grammar: she go to school.", "Tell me a joke about cats."]
    trained = [swarm_daemon.http.post("/swarm/route", json={"prompt": p}).json() for p in prompts]
    settings = Settings.load(home=swarm_daemon.home, config=swarm_config, threads=1)
    local = local_router(load_registry(swarm_config), settings)
    here = [local.route(p) for p in prompts]
    assert [r["scores"] for r in trained] == [r.scores for r in here]
    assert all(r["reason"].startswith("the trained head") for r in trained)

    with _seeded(swarm_daemon, swarm_config, env={"SWARM_EDGE_SLEEP_S": "never"}) as d:
        again = [d.http.post("/swarm/route", json={"prompt": p}).json() for p in prompts]
        assert again == trained
        maps = Path(f"/proc/{d.proc.pid}/maps").read_text()
        assert "numpy" not in maps and "onnxruntime" not in maps  # and so no training either (it needs numpy)
        # nothing resident: the router's embedder and the spare, which is forked again in the background once the
        # embedder's load took the first one (pool.py `_spawn`'s refill): wait for it, then no third
        workers = wait_for(lambda: len(ws := worker_processes(d.proc.pid)) >= 2 and ws, timeout=30)
        assert len(workers) == 2, workers
        for w in workers:
            w.kill()
        after = _reasons(d, REWRITE, 2)
        assert "semantic routing failed on this prompt" in after[0], after  # its worker was gone
        assert after[1].startswith("the trained head"), after  # a new worker, the head sent to it again


def test_a_head_cache_removed_while_the_daemon_slept_is_put_back_not_trained_again(swarm_daemon, swarm_config):
    """Asleep, the router's embedder worker is gone; the next one is told to load the head from its cache file. A
    cache cleanup meanwhile must not cost a training (seconds to minutes, every route waiting): the daemon kept the
    file's bytes and writes it back."""
    from pathlib import Path

    with _seeded(swarm_daemon, swarm_config, env={"SWARM_EDGE_SLEEP_S": "1"}) as d:
        deadline = time.monotonic() + 60
        while not d.status()["asleep"]:
            assert time.monotonic() < deadline, "the daemon did not sleep"
            time.sleep(0.2)
        (cache,) = (d.home / "cache").glob("router-*.npz")
        cache.unlink()
        assert _reasons(d, REWRITE, 1)[0].startswith("the trained head")
        assert cache.exists() and "could not load its head" not in d.output(), d.output()
        assert "numpy" not in Path(f"/proc/{d.proc.pid}/maps").read_text()  # a training would have imported it
