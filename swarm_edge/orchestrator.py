"""Plans and runs requests. Today one plan, `single`: route, make sure the files are there, lease, answer.

`stream()` is the one path every front end takes (the CLI in-process, the daemon's OpenAI and Ollama
endpoints): it yields a `start` event once the model is leased (so callers can still turn queue and budget
errors into proper answers before they commit to a streamed response), then `token` events, then one
`done` event carrying the Answer and its trace: the route and why, which model ran, and
files/queue/load/first-token/generate times. Later issues add pipelines, decomposition, cascades and the cloud.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from swarm_edge.config import Settings
from swarm_edge.engine import Engine
from swarm_edge.errors import ConfigError
from swarm_edge.registry import ModelSpec, Registry
from swarm_edge.router import Route
from swarm_edge.workers import GenerateRequest

AUTO = "auto"


@dataclass
class Answer:
    """The text of an answer plus its trace."""

    text: str
    model: str
    route: Route
    finish_reason: str
    timings: dict[str, float | None] = field(default_factory=dict)
    tokens: int = 0
    prompt_tokens: int | None = None
    left_device: bool = False

    def to_dict(self) -> dict:
        """JSON-ready form (what `ask --json` prints)."""
        d = asdict(self)
        d["route"] = self.route.to_dict()
        return d

    def trace(self) -> dict:
        """The `swarm` object of API responses: who answered, why, and where the time went."""
        return {"model": self.model, "route": self.route.to_dict(), "timings": self.timings,
                "tokens": self.tokens, "prompt_tokens": self.prompt_tokens, "left_device": self.left_device}


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


async def ask_async(prompt: str, engine: Engine, *, system: str | None = None,
                    on_token: Callable[[str], None] | None = None, **kwargs) -> Answer:
    """Route a prompt (or use `model_id`), make sure the model's files are here, lease it and stream the answer."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    answer = None
    async with contextlib.aclosing(stream(engine, messages=messages, **kwargs)) as events:
        async for event in events:
            if event["type"] == "token" and on_token:
                on_token(event["text"])
            elif event["type"] == "done":
                answer = event["answer"]
    assert answer is not None  # stream() always ends with done or raises
    return answer


def choose(engine: Engine, text: str, model_id: str | None) -> tuple[ModelSpec, Route]:
    """The model for a request: the caller's choice, or the router's for `text` when None or "auto"."""
    if model_id and model_id != AUTO:
        spec = engine.registry.get(model_id)
        return spec, Route(task="explicit", model=spec.id, confidence=1.0, reason="model chosen by the caller")
    chosen = route(engine, text)
    return engine.registry.get(chosen.model), chosen


def route(engine: Engine, text: str) -> Route:
    """Explain which task and model `text` would go to, without generating."""
    return engine.router.route(text)


def _last_user_text(messages: list[dict[str, str]]) -> str:
    return next((m["content"] for m in reversed(messages) if m.get("role") == "user"), messages[-1]["content"])


async def stream(engine: Engine, *, messages: list[dict[str, str]] | None = None, prompt: str | None = None,
                 model_id: str | None = None, max_tokens: int | None = None, temperature: float = 0.0,
                 top_p: float = 1.0, stop: list[str] | None = None, seed: int | None = None,
                 progress_factory=None, fetch: bool | None = None) -> AsyncIterator[dict[str, Any]]:
    """Answer chat `messages` (or a plain `prompt`): yields start, token..., done (with the Answer)."""
    t0 = time.perf_counter()
    if (messages is None) == (prompt is None):
        raise ValueError("stream() needs exactly one of messages or prompt")
    spec, route = choose(engine, prompt if prompt is not None else _last_user_text(messages), model_id)
    if spec.kind == "embedding":
        raise ConfigError(f"{spec.id} is an embedding model; pick a model that generates text")
    limit = max_tokens or spec.max_tokens
    common = dict(max_tokens=limit, temperature=temperature, top_p=top_p, stop=list(stop or []), seed=seed)
    if prompt is not None:
        request = GenerateRequest(prompt=prompt, **common)
    elif spec.kind == "completion":  # no template: the conversation's text is what the model continues
        turns = [m for m in messages if m.get("role") != "system"] or messages
        request = GenerateRequest(prompt="\n".join(m["content"] for m in turns), **common)
    else:
        request = GenerateRequest(messages=messages, **common)
    if not engine.has_files(spec.id):  # verified once per engine; later requests skip the thread hop
        await asyncio.to_thread(lambda: engine.files(spec.id, progress_factory, fetch=fetch))
    t_files = time.perf_counter()
    parts: list[str] = []
    done: dict = {}
    t_first = None
    async with engine.scheduler.lease(spec.id) as worker, engine.compute():
        t_leased = time.perf_counter()
        waited = t_leased - t_files
        load_s = min(waited, worker.info.get("spawn_to_ready_s") or 0.0) if worker.requests == 0 else 0.0
        await worker.begin(request)  # the model reads the prompt while our caller prepares its response
        try:
            yield {"type": "start", "model": spec.id, "route": route}
        except BaseException:
            await worker.abandon()
            raise
        async with contextlib.aclosing(worker.generate(request, sent=True)) as events:
            async for event in events:
                if event["type"] == "token":
                    if t_first is None:
                        t_first = time.perf_counter()
                    parts.append(event["text"])
                    yield event
                elif event["type"] == "done":
                    done = event
    t_end = time.perf_counter()
    engine.count_tokens(spec.id, done.get("chunks", 0))
    answer = Answer(
        text="".join(parts), model=spec.id, route=route, finish_reason=done.get("finish_reason", "stop"),
        tokens=done.get("chunks", 0), prompt_tokens=done.get("prompt_tokens"),
        timings={"files_s": _r(t_files - t0), "queue_s": _r(waited - load_s), "load_s": _r(load_s),
                 "ttft_s": _r(t_first - t0 if t_first else None), "model_ttft_s": _r(done.get("ttft_s")),
                 "decode_tok_s": _r(done.get("decode_tok_s")),
                 "generate_s": _r(t_end - t_leased), "total_s": _r(t_end - t0)},
    )
    yield {"type": "done", "answer": answer}


async def embed(engine: Engine, texts: list[str], model_id: str | None = None) -> tuple[str, list[list[float]], dict]:
    """Vectors for texts from `model_id` (or the registry's first embedding model): (model, vectors, timings)."""
    t0 = time.perf_counter()
    if model_id and model_id != AUTO:
        spec = engine.registry.get(model_id)
        if spec.kind != "embedding":
            raise ConfigError(f"{spec.id} is not an embedding model; embedding models here: "
                              + (", ".join(m.id for m in engine.registry if m.kind == "embedding") or "none"))
    else:
        spec = next((m for m in engine.registry if m.kind == "embedding"), None)
        if spec is None:
            raise ConfigError(f"{engine.registry.path} declares no embedding model")
    if not engine.has_files(spec.id):
        await asyncio.to_thread(engine.files, spec.id)
    t_files = time.perf_counter()
    async with engine.scheduler.lease(spec.id) as worker, engine.compute():
        t_leased = time.perf_counter()
        load_s = min(t_leased - t_files, worker.info.get("spawn_to_ready_s") or 0.0) if worker.requests == 0 else 0.0
        vectors = await worker.embed(texts)
        tokens = worker.last_embed_tokens
    t_end = time.perf_counter()
    return spec.id, vectors, {"files_s": _r(t_files - t0), "queue_s": _r(t_leased - t_files - load_s),
                              "load_s": _r(load_s), "embed_s": _r(t_end - t_leased), "total_s": _r(t_end - t0),
                              "tokens": tokens}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


__all__ = ["AUTO", "Answer", "ask", "ask_async", "choose", "embed", "route", "stream"]
