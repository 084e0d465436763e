"""Fail-closed connection checks, driven directly (no daemon): the Guard middleware with a stand-in ASGI app, and
the server's HTTP protocol with a stand-in transport (both labelled fakes: they test the decision, not I/O)."""

from __future__ import annotations

import asyncio
import socket

from swarm_edge.api.app import UNIX_PEER_CHECKED, Guard, Metrics
from swarm_edge.api.server import _protocol_class


async def _asgi_call(guard: Guard, scope: dict) -> int:
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await guard(scope, receive, send)
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


async def _ok_app(scope, receive, send):  # fake app: answers 200 to whatever reaches it
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _scope(server, headers=()) -> dict:
    return {"type": "http", "method": "GET", "path": "/health", "server": server,
            "headers": [(b"host", b"127.0.0.1"), *headers]}


def test_only_a_checked_unix_peer_skips_the_token():
    guard = Guard(_ok_app, metrics=Metrics(), token="t0ken", paths=set())
    run = asyncio.run
    assert run(_asgi_call(guard, _scope((UNIX_PEER_CHECKED, None)))) == 200
    # a connection the server could not classify (no server address at all), or a Unix one it did not mark,
    # is treated as TCP: token required (it used to pass as "Unix" because it had no port)
    assert run(_asgi_call(guard, _scope(None))) == 401
    assert run(_asgi_call(guard, _scope(("/some/socket", None)))) == 401
    assert run(_asgi_call(guard, _scope(("127.0.0.1", 8080)))) == 401
    assert run(_asgi_call(guard, _scope(("127.0.0.1", 8080), [(b"authorization", b"Bearer t0ken")]))) == 200
    no_tcp = Guard(_ok_app, metrics=Metrics(), token=None, paths=set())  # no TCP listener: nothing but Unix
    assert run(_asgi_call(no_tcp, _scope(None, [(b"authorization", b"Bearer ")]))) == 401


class _Transport:
    """Fake asyncio transport: records abort() and answers get_extra_info from a dict."""

    def __init__(self, extra: dict) -> None:
        self.extra, self.aborted, self.closed = extra, False, False

    def get_extra_info(self, name, default=None):
        return self.extra.get(name, default)

    def abort(self):
        self.aborted = True

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.aborted or self.closed

    def set_protocol(self, protocol):
        pass

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def write(self, data):
        pass

    def set_write_buffer_limits(self, high=None, low=None):
        self.high = high


def _protocol(metrics):
    import uvicorn

    from swarm_edge.api.app import create_app  # noqa: F401 (the protocol needs the app module importable)

    config = uvicorn.Config(_ok_app, loop="asyncio", lifespan="off")
    config.load()
    cls = _protocol_class(metrics, send_timeout=0.05)
    return cls(config=config, server_state=uvicorn.server.ServerState(), app_state={})


def test_a_connection_without_a_socket_is_refused_and_a_unix_peer_is_marked():
    async def go():
        metrics = Metrics()
        proto = _protocol(metrics)
        t = _Transport({"sockname": ("127.0.0.1", 1), "peername": ("127.0.0.1", 2)})
        proto.connection_made(t)
        assert t.aborted and metrics.refused_peers == 1  # could not be classified: nothing served

        a, b = socket.socketpair(socket.AF_UNIX)
        try:
            proto = _protocol(metrics)
            t = _Transport({"socket": a})
            proto.connection_made(t)
            assert not t.aborted and proto.server == (UNIX_PEER_CHECKED, None)  # our own uid: served, marked
            proto.pause_writing()  # the client stopped reading ...
            await asyncio.sleep(0.2)
            assert t.aborted and metrics.stalled_clients == 1  # ... and is cut off after the send timeout
        finally:
            a.close()
            b.close()
    asyncio.run(go())
