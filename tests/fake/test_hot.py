"""api/hot.py: the generation endpoints past FastAPI's routing. In-process over FAKE model sessions (the same
FakeEngine as test_api_fake.py): every request below gets the same answer with the hot paths as without them, and
the hot paths do serve the requests they are for."""

from __future__ import annotations

import asyncio
import json
import re

import httpx2
import pytest
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from swarm_edge.api.app import create_app
from swarm_edge.api.hot import HOT, HotPaths
from swarm_edge.errors import BudgetError, BusyError
from tests.fake.test_api_fake import CHAT, FakeEngine, Reply

REPLIES = {"small": Reply(["Hi", "!"])}
# (path, body or raw bytes, content type, engine replies)
CASES = {
    "chat": ("/v1/chat/completions", CHAT, "application/json", REPLIES),
    "chat streamed": ("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
                      "application/json", REPLIES),
    "completion": ("/v1/completions", {"model": "small", "prompt": "once"}, "application/json", REPLIES),
    "ollama chat": ("/api/chat", {"model": "small", "messages": [{"role": "user", "content": "hi"}]},
                    "application/json", REPLIES),
    "ollama generate": ("/api/generate", {"model": "small", "prompt": "hi", "stream": False}, "application/json",
                        REPLIES),
    "invalid field": ("/v1/chat/completions", {"model": "auto", "messages": "no"}, "application/json", {}),
    "not JSON": ("/v1/chat/completions", b'{"model": ', "application/json", {}),
    "not UTF-8": ("/api/chat", b'{"model": "\xff"}', "application/json", {}),
    "nested too deeply": ("/v1/chat/completions", b"[" * 100_000, "application/json", {}),
    "too large, chunked": ("/v1/chat/completions", ("chunked", b" " * (1 << 20) + b"{}"), "application/json", {}),
    "empty body": ("/v1/completions", b"", "application/json", {}),
    "a JSON list": ("/api/generate", [1, 2], "application/json", {}),
    "unlabelled JSON": ("/v1/chat/completions", CHAT, "", REPLIES),
    "text/plain": ("/v1/chat/completions", CHAT, "text/plain", REPLIES),
    "unknown model": ("/v1/chat/completions", {**CHAT, "model": "nope"}, "application/json", {}),
    "unknown model, ollama": ("/api/chat", {"model": "nope", "messages": []}, "application/json", {}),
    "bad schema": ("/v1/chat/completions", {**CHAT, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "no-such-type"}}}}, "application/json", REPLIES),
    "budget": ("/v1/chat/completions", {**CHAT, "stream": True}, "application/json",
               {"small": Reply(fail_at_open=BudgetError("no room", needed=5, budget=3))}),
    "busy": ("/api/generate", {"model": "small", "prompt": "hi"}, "application/json",
             {"small": Reply(fail_at_open=BusyError("queue full", retry_after=1.2))}),
}
VARYING = re.compile(rb'("(?:id|created|created_at|system_fingerprint)":)("[^"]*"|\d+)|("[a-z_]*_(?:s|duration)":)'
                     rb'[0-9.e-]+|(chatcmpl-|cmpl-|call_)[0-9a-f]+')


def _send(app, path: str, body, ctype: str):
    async def go():
        transport = httpx2.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1",
                                      headers={"authorization": "Bearer x"}) as c:
            if isinstance(body, tuple):  # ("chunked", bytes): no Content-Length, the body cap counts as it arrives
                async def pieces():
                    yield body[1]
                raw = pieces()
            else:
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            return await c.post(path, content=raw, headers={"content-type": ctype} if ctype else {})
    return asyncio.run(go())


def _steady(content: bytes) -> bytes:
    """The answer without what differs from one request to the next (ids, clocks, durations)."""
    return VARYING.sub(lambda m: (m.group(1) or m.group(3) or m.group(4) or b"") + b"0", content)


def _hot(app) -> HotPaths:
    layer = app.middleware_stack
    while not isinstance(layer, HotPaths):
        layer = layer.app
    return layer


@pytest.mark.parametrize("case", list(CASES))
def test_the_same_answer_with_and_without_the_hot_paths(case):
    path, body, ctype, replies = CASES[case]
    fast = create_app(FakeEngine(replies=replies), token="x")
    slow = create_app(FakeEngine(replies=replies), token="x", hot=False)
    a, b = _send(fast, path, body, ctype), _send(slow, path, body, ctype)
    assert (a.status_code, a.headers.get("content-type"), a.headers.get("retry-after")) == \
        (b.status_code, b.headers.get("content-type"), b.headers.get("retry-after")), (a.text[:300], b.text[:300])
    assert _steady(a.content) == _steady(b.content)
    assert a.content, "every case answers something"


def test_the_hot_paths_serve_valid_bodies_and_hand_the_rest_to_fastapi():
    app = create_app(FakeEngine(replies=REPLIES), token="x")
    assert _send(app, *CASES["chat"][:3]).status_code == 200
    hot = _hot(app)
    assert hot.served == 1 and hot.passed == 0
    assert _send(app, *CASES["invalid field"][:3]).status_code == 400
    assert _send(app, "/v1/models", {}, "application/json").status_code == 405  # not a hot path at all
    assert (hot.served, hot.passed) == (1, 1)
    assert set(hot.routes) == set(HOT)


class Body(BaseModel):
    x: int


def test_a_hot_path_must_be_a_post_taking_the_request_and_a_body_model():
    good, extra = APIRouter(), APIRouter()

    @good.post("/p")
    async def fine(request: Request, body: Body):
        return {}

    @extra.post("/p")
    async def more(request: Request, body: Body, n: int = 0):
        return {}

    assert HotPaths.of(good.routes, ("/p",)) == {"/p": (Body, fine)}
    with pytest.raises(ValueError, match="takes"):
        HotPaths.of(extra.routes, ("/p",))
    with pytest.raises(ValueError, match="no POST route"):
        HotPaths.of(good.routes, ("/p", "/q"))
    for kw in ({"status_code": 201}, {"response_model": Body}, {"dependencies": [Depends(lambda: None)]}):
        other = APIRouter()
        other.post("/p", **kw)(fine)
        with pytest.raises(ValueError, match="cannot have"):
            HotPaths.of(other.routes, ("/p",))


def _raw_asgi(app, messages: list[dict]) -> list[dict]:
    """One request straight through the ASGI app: its body as the given receive messages; what it sent."""
    from swarm_edge.api.middleware import UNIX_PEER_CHECKED

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
             "root_path": "", "headers": [(b"host", b"x"), (b"content-type", b"application/json")],
             "server": (UNIX_PEER_CHECKED, None), "client": None, "state": {}}
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_a_client_gone_mid_body_is_answered_and_counted_as_fastapi_does():
    part = [{"type": "http.request", "body": b'{"model": "sm', "more_body": True}, {"type": "http.disconnect"}]
    answers, counts = [], []
    for hot in (True, False):
        app = create_app(FakeEngine(replies=REPLIES), token="x", hot=hot)
        answers.append(_raw_asgi(app, [dict(m) for m in part]))
        counts.append(dict(app.state.metrics.requests))
    assert answers[0] == answers[1] and counts[0] == counts[1]
    assert answers[0][0]["status"] == 400 and counts[0] == {("/v1/chat/completions", 400): 1}
