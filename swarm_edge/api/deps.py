"""What handlers read from the app: the engine, the counters, the request deadline (all on `app.state`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request

from swarm_edge import orchestrator
from swarm_edge.api.metrics import Metrics
from swarm_edge.workers.direct import Sink

if TYPE_CHECKING:
    from swarm_edge.engine import Engine

T = TypeVar("T")


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


def metrics_of(request: Request) -> Metrics:
    return request.app.state.metrics


def deadline_of(request: Request) -> float | None:
    """When a generation arriving now must be done (event-loop time), or None without a request timeout."""
    timeout = request.app.state.request_timeout
    return None if not timeout else asyncio.get_running_loop().time() + timeout


def sink_for(request: Request, stream: bool) -> Sink | None:
    """A streamed answer's direct path (workers/direct.py), unless SWARM_EDGE_DIRECT is off."""
    return Sink() if stream and request.app.state.direct else None


async def built(build: Callable[..., T], given: Any, *args: Any) -> T:
    """`build(given, *args)`: a request's schema or tools checked and turned into a grammar, off the event loop
    (that is CPU work), but in line when there is nothing to build: a thread hop would cost every plain request a
    fraction of a millisecond of its time to first token."""
    if given in (None, "", [], {}):
        return build(given, *args)
    return await asyncio.to_thread(build, given, *args)


def generation(request: Request, **kw: Any):
    """The orchestrator's stream for this request's engine."""
    return orchestrator.stream(engine_of(request), **kw)


__all__ = ["built", "deadline_of", "engine_of", "generation", "metrics_of", "sink_for"]
