"""Plans and runs requests: single, cascade, ensemble, pipeline, decompose, cloud.

`stream()` is the one path every front end takes (the CLI in-process, the daemon's OpenAI and Ollama
endpoints). It yields `Start` once the model whose output the caller will see is leased (so callers can still
turn queue and budget errors into proper answers before they commit to a streamed response), then `Token`s,
then one `Done` carrying the Answer and its trace.

Plans (the trace's `plan`, each model call one entry of its `steps`):
- single: the route's model answers (also any explicit model id).
- cascade (route `strategy: cascade`): the route's models in order; each but the last answers with its
  token log-probabilities measured, and its answer is kept when the mean is >= the route's `min_logprob`
  (and it passes the task's self-checks), else the next model answers. The tried answer is held back, so the
  caller sees only the kept one.
- ensemble (route `strategy: ensemble`): every model of the route answers; label answers are voted on
  (ties: the surest model), free text is chosen by mean log-probability.
- the calculator (route `tool: calculator`): the model writes an expression, calc.py computes it.
- pipeline (`model: "pipeline:NAME"`): models.yaml's steps in order, each output fed to the next step.
- decompose (model `auto`, a request that reads as several tasks): each subtask is routed and answered in order.
- cloud: a hard task, an unsure router, a cascade unsure to its end or a local failure, where allowed.

The parts live in swarm_edge/orchestration/ (docs/architecture.md draws the flow); this module is their face.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

from swarm_edge.errors import ConfigError
from swarm_edge.events import Done, Start, Token
from swarm_edge.orchestration.answer import Answer, Step
from swarm_edge.orchestration.multistep import SEPARATOR
from swarm_edge.orchestration.plan import AUTO, CLOUD, PIPELINE_PREFIX
from swarm_edge.orchestration.planner import make_plan, plan_schema, read_request
from swarm_edge.orchestration.request import Request
from swarm_edge.orchestration.run import LOCAL_FAILURES, Events, execute
from swarm_edge.orchestration.runtime import Runtime
from swarm_edge.orchestration.strategies.calculator import CALC_EXAMPLES, CALC_SYSTEM
from swarm_edge.router import Route

if TYPE_CHECKING:
    from swarm_edge.config import Settings
    from swarm_edge.registry import Registry


async def stream(rt: Runtime, *, allow_cloud: bool = True, **kwargs: Any) -> Events:
    """Answer chat `messages` (or a plain `prompt`): yields Start, Token..., Done (with the Answer).

    Keyword arguments: messages | prompt, model_id (a model id, "auto", "cloud" or "pipeline:NAME"),
    max_tokens, temperature, top_p, stop, seed, cache_prompt, progress_factory, fetch, decompose, task (answer as
    this task's route: no routing, no plan), logprobs (every call measures its mean token log-prob). `allow_cloud=False`
    keeps this request on the device whatever the configuration says. (An async generator: a bad argument is raised
    on the first iteration, where callers handle the stream's errors.)
    """
    async with contextlib.aclosing(execute(rt, Request.of(allow_cloud=allow_cloud, **kwargs))) as events:
        async for event in events:
            yield event


def ask(prompt: str, registry: Registry, settings: Settings, *, budget: int | str | None = None,
        **kwargs: Any) -> Answer:
    """Answer one prompt in this process (its models run in worker processes inside the budget)."""
    from swarm_edge.engine import Engine

    async def run() -> Answer:
        engine = Engine(registry, settings, budget=budget, spare=False)
        try:
            return await ask_async(prompt, engine, **kwargs)
        finally:
            await engine.close()

    return asyncio.run(run())


async def ask_async(prompt: str, rt: Runtime, *, system: str | None = None,
                    on_token: Callable[[str], None] | None = None, **kwargs: Any) -> Answer:
    """Route a prompt (or use `model_id`), make sure the models' files are here and stream the answer."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return await answer_of(stream(rt, messages=messages, **kwargs), on_token)


async def answer_of(events: AsyncGenerator[Start | Token | Done[Answer], None],
                    on_token: Callable[[str], None] | None = None) -> Answer:
    """Run a stream to its end: each token to `on_token`, the Answer returned."""
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, Token) and on_token:
                on_token(event.text)
            elif isinstance(event, Done):
                return event.result
    raise RuntimeError("the answer stream ended without its answer")  # stream() always ends with Done or raises


def route(rt: Runtime, text: str) -> Route:
    """Which task and model `text` would go to, without generating (blocking: call from a thread)."""
    return rt.route(text, rt.resident())


async def route_async(rt: Runtime, text: str) -> Route:
    """`route` from async code: the embedding runs in a thread."""
    return await asyncio.to_thread(rt.route, text, rt.resident())


async def embed(rt: Runtime, texts: list[str], model_id: str | None = None) -> tuple[str, list[list[float]], dict]:
    """Vectors for texts from `model_id` (or the registry's first embedding model): (model, vectors, timings)."""
    registry = rt.registry
    if model_id and model_id != AUTO:
        spec = registry.get(model_id)
        if spec.kind != "embedding":
            raise ConfigError(f"{spec.id} is not an embedding model; embedding models here: "
                              + (", ".join(m.id for m in registry if m.kind == "embedding") or "none"))
    else:
        found = next((m for m in registry if m.kind == "embedding"), None)
        if found is None:
            raise ConfigError(f"{registry.path} declares no embedding model")
        spec = found
    async with rt.session(spec.id) as session:
        vectors = await session.embed(texts)
    timings = session.timings
    return spec.id, vectors, {k: timings[k] for k in ("files_s", "queue_s", "load_s", "embed_s", "total_s", "tokens")}


__all__ = ["AUTO", "CALC_EXAMPLES", "CALC_SYSTEM", "CLOUD", "LOCAL_FAILURES", "PIPELINE_PREFIX", "SEPARATOR",
           "Answer", "Step", "answer_of", "ask", "ask_async", "embed", "make_plan", "plan_schema", "read_request",
           "route", "route_async", "stream"]
