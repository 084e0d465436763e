"""Plans and runs requests. Today one plan, `single`: route, make sure the files are there, lease, answer.

Every answer carries a trace: the route and why, which model ran, and fetch/load/first-token/generate
times. Later issues add pipelines, decomposition, cascades and the cloud.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from swarm_edge.config import Settings
from swarm_edge.engine import Engine
from swarm_edge.errors import InferenceError
from swarm_edge.registry import Registry
from swarm_edge.router import KeywordRouter, Route
from swarm_edge.workers import GenerateRequest


@dataclass
class Answer:
    """The text of an answer plus its trace."""

    text: str
    model: str
    route: Route
    finish_reason: str
    timings: dict[str, float | None] = field(default_factory=dict)
    tokens: int = 0
    left_device: bool = False

    def to_dict(self) -> dict:
        """JSON-ready form (what `ask --json` prints)."""
        d = asdict(self)
        d["route"] = self.route.to_dict()
        return d


def ask(prompt: str, registry: Registry, settings: Settings, *, budget: int | str | None = None,
        **kwargs) -> Answer:
    """Answer one prompt in this process (its models run in worker processes inside the budget)."""

    async def run() -> Answer:
        engine = Engine(registry, settings, budget=budget, spare=False)
        try:
            return await ask_async(prompt, engine, **kwargs)
        finally:
            await engine.close()

    return asyncio.run(run())


async def ask_async(prompt: str, engine: Engine, *, model_id: str | None = None, max_tokens: int | None = None,
                    temperature: float = 0.0, system: str | None = None,
                    on_token: Callable[[str], None] | None = None, progress_factory=None) -> Answer:
    """Route a prompt (or use `model_id`), make sure the model's files are here, lease it and stream the answer."""
    registry = engine.registry
    t0 = time.perf_counter()
    if model_id is not None:
        spec = registry.get(model_id)
        route = Route(task="explicit", model=spec.id, confidence=1.0, reason="model chosen by the caller")
    else:
        route = KeywordRouter(registry).route(prompt)
        spec = registry.get(route.model)
    if spec.kind == "embedding":
        raise InferenceError(f"{spec.id} is an embedding model; pick a model that generates text")
    await asyncio.to_thread(engine.files, spec.id, progress_factory)
    t_files = time.perf_counter()
    limit = max_tokens or spec.max_tokens
    if spec.kind == "chat":
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        request = GenerateRequest(messages=messages, max_tokens=limit, temperature=temperature)
    else:
        request = GenerateRequest(prompt=prompt, max_tokens=limit, temperature=temperature)
    parts: list[str] = []
    done: dict = {}
    async with engine.scheduler.lease(spec.id) as worker, contextlib.aclosing(worker.generate(request)) as events:
        t_leased = time.perf_counter()
        async for event in events:
            if event["type"] == "token":
                parts.append(event["text"])
                if on_token:
                    on_token(event["text"])
            else:
                done = event
    t_end = time.perf_counter()
    return Answer(
        text="".join(parts).strip(), model=spec.id, route=route, finish_reason=done.get("finish_reason", "stop"),
        tokens=done.get("chunks", 0),
        timings={"files_s": round(t_files - t0, 4), "load_s": round(t_leased - t_files, 4),
                 "ttft_s": _r(done.get("ttft_s")), "decode_tok_s": _r(done.get("decode_tok_s")),
                 "generate_s": round(t_end - t_leased, 4), "total_s": round(t_end - t0, 4)},
    )


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
