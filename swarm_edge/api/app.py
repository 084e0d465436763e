"""The HTTP API: OpenAI-compatible /v1 (openai.py), Ollama-compatible /api (ollama.py), and /swarm, /metrics,
/health (swarm.py), each a router; errors.py maps errors to each path family's shape; middleware.py guards.

State lives on `app.state` (the Engine, counters, the request timeout). Every generation goes through
`orchestrator.stream`, which yields Start once the model is leased: the handlers wait for it before they answer,
so queue-full (503 + Retry-After), budget (507, both numbers) and unknown-model (404) errors become proper HTTP
answers even for streamed requests. Once a stream has started, an error becomes a final error event in the
stream. Streams are closed on every path (client gone included), which releases the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from swarm_edge import __version__
from swarm_edge.api import ollama, openai, swarm
from swarm_edge.api.errors import classify, error_body, install_handlers
from swarm_edge.api.hot import HotPaths
from swarm_edge.api.metrics import Metrics, prometheus_text
from swarm_edge.api.middleware import MAX_BODY, UNIX_PEER_CHECKED, Guard
from swarm_edge.api.schemas import finish_openapi

if TYPE_CHECKING:
    from swarm_edge.engine import Engine

log = logging.getLogger("swarm_edge.api")


def _lifespan(engine: Engine, on_ready):
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start(lazy=True)  # the forkserver starts with the first request; idle.py
        # off the event loop and side by side: load the router's embedding model and trained head (a request that
        # comes while the head trains routes by the rules), and read the GGUF facts of fetched models, so that
        # admission finds them cached
        def warm_router():
            why = engine.router.warm()
            if why:
                log.warning("%s", why)

        warm = asyncio.gather(asyncio.to_thread(warm_router), asyncio.to_thread(engine.model_estimates))
        warm.add_done_callback(_settled)
        if on_ready:
            on_ready()
        try:
            yield
        finally:
            warm.cancel()
            await engine.close()
    return lifespan


def _settled(warm: asyncio.Future) -> None:
    """The warm-up's outcome, read: cancelled at shutdown is no news (asyncio would log it as "exception was never
    retrieved", with a traceback); anything else is said once."""
    exc = None if warm.cancelled() else warm.exception()
    if exc is not None and not isinstance(exc, asyncio.CancelledError):
        log.warning("warming up failed: %s: %s", type(exc).__name__, exc)


def create_app(engine: Engine, *, token: str | None = None, on_ready=None, request_timeout: float | None = None,
               max_connections: int | None = None, direct: bool = True, hot: bool = True) -> FastAPI:
    """The FastAPI app over an Engine. The lifespan starts the engine's workers and stops them all.
    `request_timeout`: seconds a generation request may take, from arrival to its last token (None: no limit).
    `max_connections`: past this many open connections, requests are answered 503 (None: no cap).
    `direct`: streamed answers take the direct path (workers/direct.py) where they can.
    `hot`: the generation endpoints skip FastAPI's routing (api/hot.py); off only to compare the two."""
    app = FastAPI(title="swarm-edge", version=__version__, lifespan=_lifespan(engine, on_ready), docs_url=None,
                  redoc_url=None, openapi_url="/openapi.json")
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    metrics = Metrics(max_connections)
    app.state.engine, app.state.metrics, app.state.request_timeout = engine, metrics, request_timeout
    app.state.direct = direct
    install_handlers(app)
    routers = [part.router for part in (openai, ollama, swarm)]
    for router in routers:
        app.include_router(router)
    # /metrics counts requests by path: the endpoints' own, every other path as "other"
    routes = [*app.routes, *(r for router in routers for r in router.routes)]
    paths = {r.path for r in routes if hasattr(r, "path")}
    if hot:
        app.add_middleware(HotPaths, routes=HotPaths.of(routes))  # added first: inside Guard
    app.add_middleware(Guard, metrics=metrics, token=token, paths=paths)
    return app


def _openapi(app: FastAPI) -> dict:
    """GET /openapi.json: FastAPI's document, finished to say what the daemon answers (built once)."""
    if app.openapi_schema is None:
        app.openapi_schema = finish_openapi(get_openapi(
            title=app.title, version=app.version, routes=app.routes,
            description="swarm-edge's daemon: OpenAI-compatible /v1, Ollama-compatible /api, and /swarm, /metrics, "
                        "/health. On the Unix socket no token is needed; the TCP listener (serve --tcp) requires "
                        "`Authorization: Bearer <token>` and a loopback Host header."))
    return app.openapi_schema


__all__ = ["MAX_BODY", "UNIX_PEER_CHECKED", "Guard", "Metrics", "classify", "create_app", "error_body",
           "prometheus_text"]
