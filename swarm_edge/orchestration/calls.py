"""One model call: a session's events relayed, and what the call produced (text, figures, timings)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from swarm_edge.errors import ConfigError, InferenceError
from swarm_edge.events import Done, Start, Token
from swarm_edge.orchestration.answer import Step
from swarm_edge.orchestration.runtime import Runtime
from swarm_edge.registry import ModelSpec
from swarm_edge.workers.base import GenerateRequest, GenStats


@dataclass
class Call:
    """What a model (or the cloud) produced for one request."""

    model: str
    chunks: list[str] = field(default_factory=list)
    stats: GenStats = field(default_factory=GenStats)
    timings: dict[str, Any] = field(default_factory=dict)
    text: str = ""

    @property
    def done(self) -> dict[str, Any]:
        """The figures as the worker's done event had them (None left out)."""
        return {k: v for k, v in asdict(self.stats).items() if v is not None}

    def step(self, task: str, role: str, confidence: float | None = None, *, shown: bool = False,
             **extra: Any) -> Step:
        return Step(task=task, model=self.model, role=role, confidence=confidence, tokens=self.stats.chunks,
                    timings=self.timings, mean_logprob=self.stats.mean_logprob, extra=extra, shown=shown)

    def show(self, text: str) -> None:
        """Replace what the call shows (the calculator shows its computed result)."""
        self.text, self.chunks = text, [text]


async def run_call(rt: Runtime, spec: ModelSpec, request: GenerateRequest, *, fetch: bool | None = None,
                   progress_factory: Any = None, sink: Any = None) -> AsyncGenerator[Start | Token | Done[Call], None]:
    """One model call: Start (leased, the prompt sent), Tokens, then Done with the Call. `sink`: the streamed
    response the worker may write the tokens to itself (workers/direct.py), for calls whose every token is shown."""
    if spec.kind == "embedding":
        raise ConfigError(f"{spec.id} is an embedding model; pick a model that generates text")
    call = Call(spec.id)
    async with rt.session(spec.id, fetch=fetch, progress_factory=progress_factory) as session:
        if request.tools and rt.tool_format(spec.id) is None:
            raise ConfigError(f"{spec.id} cannot call tools: its chat template has no tool support (give models.yaml "
                              "a `tools` route listing models that have it, or pick one)")
        async with contextlib.aclosing(session.generate(request, sink)) as events:
            async for event in events:
                if isinstance(event, Token):
                    call.chunks.append(event.text)
                    yield event
                elif isinstance(event, Start):
                    yield event
                else:
                    call.stats = event.result
    call.text = "".join(call.chunks)
    call.timings = session.timings
    yield Done(call)


async def quiet(rt: Runtime, spec: ModelSpec, request: GenerateRequest, **kw: Any) -> Call:
    """A model call whose tokens are held back (cascade tries, ensemble members, the calculator, the planner)."""
    async with contextlib.aclosing(run_call(rt, spec, request, **kw)) as events:
        async for ev in events:
            if isinstance(ev, Done):
                return ev.result
    raise InferenceError(f"{spec.id} ended without a result")  # run_call always ends with Done or raises


def replay(call: Call) -> Iterator[Start | Token]:
    """The events that show a call whose answer was held back."""
    yield Start(call.model)
    for chunk in call.chunks:
        yield Token(chunk)


__all__ = ["Call", "quiet", "replay", "run_call"]
