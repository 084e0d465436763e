"""The HTTP API in-process over FAKE model sessions (tests/fake/runtime.py): each router's answers and error
shapes, SSE and NDJSON framing, priming (an error before the answer starts is an HTTP status), metrics. Real
daemons over real sockets are tested in tests/api; this checks the handlers' logic in milliseconds."""

from __future__ import annotations

import asyncio
import json

import httpx2
import pytest

from swarm_edge.api.app import create_app
from swarm_edge.errors import BudgetError, BusyError
from tests.fake.runtime import FakeCloud, FakeRuntime, Reply


class FakeEngine(FakeRuntime):
    """FAKE: a FakeRuntime with what the API reads of an engine besides orchestration."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.router = type("R", (), {"kind": "keywords"})()
        self.settings = type("S", (), {"socket_path": "/nonexistent/sock", "models_dir": "/nonexistent"})()

    def describe(self) -> dict:
        snap = {"budget": 1 << 30, "used": 0, "base": 0, "waiting": 0, "residents": [],
                "stats": {"loads": 0, "evictions": 0, "ttl_unloads": 0, "crashes": 0, "busy_rejections": 0}}
        return {"scheduler": snap, "tokens": dict(self.tokens), "idle_ttl": None,
                "cloud": self.cloud.describe() if self.cloud else None}

    def model_estimates(self) -> dict:
        return {}


def call(engine, method: str, path: str, **kw):
    """One request over loopback TCP with the bearer token (the app's fail-closed default refuses anything else)."""
    app = create_app(engine, token="x")

    async def go():
        transport = httpx2.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1",
                                      headers={"authorization": "Bearer x"}) as c:
            return await c.request(method, path, **kw)
    return asyncio.run(go())


CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hello there"}]}


def post(engine, path, body):
    return call(engine, "POST", path, json=body)


def test_chat_completion_answers_with_the_trace():
    r = post(FakeEngine(replies={"small": Reply(["Hi", "!"])}), "/v1/chat/completions", CHAT)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["choices"][0]["message"]["content"] == "Hi!" and d["model"] == "small"
    assert d["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    assert d["swarm"]["route"]["task"] == "chat" and d["swarm"]["steps"][0]["role"] == "answer"


def test_streamed_chat_is_role_token_chunks_finish_usage_done():
    r = post(FakeEngine(replies={"small": Reply(["a", "b"])}), "/v1/chat/completions",
             {**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    lines = [x[6:] for x in r.text.split("\n\n") if x.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(x) for x in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ["a", "b"]
    assert chunks[3]["choices"][0]["finish_reason"] == "stop" and "swarm" in chunks[3]
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["completion_tokens"] == 2


def test_an_error_before_the_answer_starts_is_an_http_status():
    engine = FakeEngine(replies={"small": Reply(fail_at_open=BudgetError("no room", needed=5, budget=3))})
    r = post(engine, "/v1/chat/completions", {**CHAT, "stream": True})
    assert r.status_code == 507 and r.json()["error"]["swarm_error"] == "BudgetError"
    assert r.json()["error"]["needed_bytes"] == 5 and r.json()["error"]["budget_bytes"] == 3


def test_busy_is_503_with_retry_after_rounded_up():
    engine = FakeEngine(replies={"small": Reply(fail_at_open=BusyError("queue full", retry_after=1.2))})
    r = post(engine, "/v1/chat/completions", CHAT)
    assert r.status_code == 503 and r.headers["retry-after"] == "2"


def test_an_error_after_the_start_ends_the_stream_with_an_error_chunk():
    from swarm_edge.errors import InferenceError
    engine = FakeEngine(replies={"small": Reply(["a", "b"], fail_after=1, fail_with=InferenceError("broke"))})
    r = post(engine, "/v1/chat/completions", {**CHAT, "stream": True})
    assert r.status_code == 200
    last = json.loads([x[6:] for x in r.text.split("\n\n") if x.startswith("data: ")][-1])
    assert last["error"]["swarm_error"] == "InferenceError" and last["error"]["message"] == "broke"


@pytest.mark.parametrize("path,body,shape", [
    ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, "openai"),
    ("/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, "ollama")])
def test_unknown_models_are_404_in_the_path_family_shape(path, body, shape):
    r = post(FakeEngine(), path, body)
    assert r.status_code == 404
    assert (isinstance(r.json()["error"], dict) if shape == "openai" else isinstance(r.json()["error"], str))


@pytest.mark.parametrize("path", ["/v1/nothing", "/api/nothing"])
def test_no_such_endpoint_in_each_shape(path):
    r = call(FakeEngine(), "GET", path)
    assert r.status_code == 404
    err = r.json()["error"]
    assert (err == "no such endpoint") if path.startswith("/api/") else (err["code"] == "not_found")


def test_a_bad_body_names_the_field():
    r = post(FakeEngine(), "/v1/chat/completions", {"model": "auto", "messages": "no"})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]


def test_tcp_without_the_token_is_401_and_a_foreign_host_403():
    app = create_app(FakeEngine(), token="secret")

    async def go(headers):
        transport = httpx2.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            return await c.get("/health", headers=headers)
    assert asyncio.run(go({})).status_code == 401
    assert asyncio.run(go({"authorization": "Bearer secret", "host": "evil.example"})).status_code == 403
    assert asyncio.run(go({"authorization": "Bearer secret"})).status_code == 200


def test_ollama_chat_streams_ndjson_and_ends_with_the_durations():
    r = post(FakeEngine(replies={"small": Reply(["x", "y"])}), "/api/chat",
             {"model": "small", "messages": [{"role": "user", "content": "hi"}]})
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert [x["message"]["content"] for x in lines[:-1]] == ["x", "y"] and lines[-1]["done"] is True
    assert lines[-1]["eval_count"] == 2 and lines[-1]["done_reason"] == "stop"


def test_ollama_empty_chat_is_a_preload_without_a_compute_slot():
    engine = FakeEngine()
    r = post(engine, "/api/chat", {"model": "big", "messages": []})
    assert r.json()["done_reason"] == "load" and engine.records[0].compute is False


def test_models_list_the_router_the_swarm_the_pipelines_and_the_cloud():
    ids = [m["id"] for m in call(FakeEngine(cloud=FakeCloud()), "GET", "/v1/models").json()["data"]]
    assert ids[0] == "auto" and "small" in ids and "pipeline:polish" in ids and ids[-1] == "cloud"


def test_metrics_read_the_engine_description():
    engine = FakeEngine(cloud=FakeCloud(), replies={"small": Reply(["a", "b", "c"])})
    post(engine, "/v1/chat/completions", CHAT)
    text = call(engine, "GET", "/metrics").text
    assert 'swarm_edge_tokens_generated_total{model="small"} 3' in text
    assert "swarm_edge_cloud_circuit_open 0" in text and "swarm_edge_memory_budget_bytes 1073741824" in text


def test_route_explains_without_generating():
    engine = FakeEngine()
    r = post(engine, "/swarm/route", {"prompt": "extract the date: 3 May"})
    assert r.json()["task"] == "extract" and engine.records == []
