"""ASGI middleware, one concern each, composed by `Guard` (outermost first): request metrics, JSON bodies sent
without a content type, TCP authentication (a bearer token and a loopback Host), the open-connection cap, and the
request body cap. Every refusal takes its path's error shape (errors.py)."""

from __future__ import annotations

import hmac
import time
from typing import Any

from starlette.exceptions import HTTPException

from swarm_edge.api.errors import error_response
from swarm_edge.api.metrics import Metrics

MAX_BODY = 1 << 20
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
# scope["server"] of a Unix-socket connection whose peer uid the server's protocol checked (server.py sets it);
# any other connection, one the server could not classify included, is treated as TCP: token and Host required
UNIX_PEER_CHECKED = "swarm-edge:unix-peer-checked"
ASGIApp = Any
UNLABELLED = ("", "application/x-www-form-urlencoded")  # content types a JSON body arrives with from such clients


def _headers(scope: dict) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


class TooLarge(HTTPException):
    def __init__(self) -> None:
        super().__init__(413, f"request body is larger than {MAX_BODY // 1024} KiB")


class RequestMetrics:
    """Counts every request by path (unknown paths as "other") and status, and times it."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, paths: set[str]) -> None:
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope["path"]
            self.metrics.observe(path if path in self.paths else "other", status[0], time.perf_counter() - t0)


class JsonBody:
    """curl -d and many Ollama clients send JSON without saying so (Ollama accepts it): read it as JSON."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST" and \
                _headers(scope).get("content-type", "").split(";")[0].strip() in UNLABELLED:
            scope = dict(scope)
            scope["headers"] = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-type"] + \
                [(b"content-type", b"application/json")]
        await self.app(scope, receive, send)


class TcpAuth:
    """Fail closed: every connection but a Unix one whose peer the server checked needs a loopback Host header
    and the bearer token (no token configured: nothing but Unix gets in)."""

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send) -> None:
        server = scope.get("server")
        if scope["type"] == "http" and not (server and server[0] == UNIX_PEER_CHECKED):
            refusal = self.refusal(_headers(scope), scope["path"])
            if refusal is not None:
                return await refusal(scope, receive, send)
        await self.app(scope, receive, send)

    def refusal(self, headers: dict[str, str], path: str):
        host = headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name not in LOOPBACK_HOSTS:
            return error_response(path, 403, f"Host {host!r} is not allowed (loopback names only)", "forbidden_host")
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not self.token or not hmac.compare_digest(given.encode(), self.token.encode()):
            return error_response(path, 401, "missing or wrong bearer token", "unauthorized",
                                  headers={"WWW-Authenticate": "Bearer"})
        return None


class ConnectionCap:
    """Past `metrics.max_connections` open connections, requests are answered 503 with Retry-After."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        cap = self.metrics.max_connections
        if scope["type"] == "http" and cap is not None and self.metrics.connections > cap:
            return await error_response(scope["path"], 503, f"more than {cap} open connections; try again shortly",
                                        "server_busy", headers={"Retry-After": "1"})(scope, receive, send)
        await self.app(scope, receive, send)


class BodyCap:
    """A body over MAX_BODY is refused: by its Content-Length before it is read, else as it arrives."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = _headers(scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            if length.isdigit():
                refusal = error_response(scope["path"], 413, TooLarge().detail, "request_too_large")
            else:
                refusal = error_response(scope["path"], 400, "bad Content-Length", "bad_request")
            return await refusal(scope, receive, send)
        seen = [0]

        async def receive_wrapper():
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > MAX_BODY:
                    raise TooLarge()
            return message

        await self.app(scope, receive_wrapper, send)


def Guard(app: ASGIApp, *, metrics: Metrics, token: str | None, paths: set[str]) -> ASGIApp:  # noqa: N802
    """The daemon's middleware stack over `app` (the order the checks ran in before they were split)."""
    return RequestMetrics(JsonBody(TcpAuth(ConnectionCap(BodyCap(app), metrics=metrics), token=token)),
                          metrics=metrics, paths=paths)


__all__ = ["LOOPBACK_HOSTS", "MAX_BODY", "UNIX_PEER_CHECKED", "BodyCap", "ConnectionCap", "Guard", "JsonBody",
           "RequestMetrics", "TcpAuth"]
