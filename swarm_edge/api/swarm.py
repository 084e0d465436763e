"""swarm-edge's own endpoints: /health, /swarm/status, /swarm/route, /metrics."""

from __future__ import annotations

import asyncio
import os
import time

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from swarm_edge import __version__, orchestrator
from swarm_edge.api.deps import engine_of, metrics_of
from swarm_edge.api.metrics import prometheus_text
from swarm_edge.api.schemas import Health, RouteOut, RouteRequest, Status, responses

router = APIRouter()


@router.get("/health", responses=responses(Health))
async def health(request: Request):
    return {"status": "ok", "version": __version__, "pid": os.getpid(),
            "uptime_s": round(time.time() - metrics_of(request).started, 3), "models": len(engine_of(request).registry)}


@router.get("/swarm/status", responses=responses(Status))
async def swarm_status(request: Request):
    engine = engine_of(request)
    described = engine.describe()
    snap = described["scheduler"]
    snap["budget_source"] = engine.budget_source
    snap["asleep"] = engine.sleeper is not None and engine.sleeper.asleep
    snap["dozing"] = engine.sleeper is not None and engine.sleeper.dozing
    snap["models"] = await asyncio.to_thread(engine.model_estimates)
    snap["pid"], snap["socket"] = os.getpid(), str(engine.settings.socket_path)
    snap["streams_open"] = metrics_of(request).streams_open
    snap["cloud"] = described["cloud"]
    return snap


@router.post("/swarm/route", responses=responses(RouteOut, 400))
async def swarm_route(request: Request, body: RouteRequest):
    return (await orchestrator.route_async(engine_of(request), body.prompt)).to_dict()


@router.get("/metrics", response_class=PlainTextResponse, responses=responses(None))
async def prometheus(request: Request):
    text = prometheus_text(engine_of(request).describe(), metrics_of(request))
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


__all__ = ["router"]
