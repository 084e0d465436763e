"""What every part of one request's answer shares: the runtime, the request, its cloud escalation."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from swarm_edge.events import Done, Start, Token
from swarm_edge.orchestration.answer import Step
from swarm_edge.orchestration.calls import Call, quiet, run_call
from swarm_edge.orchestration.escalation import Escalation
from swarm_edge.orchestration.request import Request
from swarm_edge.orchestration.runtime import Runtime
from swarm_edge.router import Route
from swarm_edge.workers.base import GenerateRequest


@dataclass
class Solved:
    """A task answered: the call whose text was shown, and the steps that led to it."""

    call: Call
    steps: list[Step]


Solving = AsyncGenerator[Start | Token | Done[Solved], None]  # what a strategy yields


@dataclass
class Context:
    rt: Runtime
    request: Request
    esc: Escalation

    @property
    def files(self) -> dict[str, Any]:
        """How model files are prepared for this request."""
        return {"fetch": self.request.fetch, "progress_factory": self.request.progress_factory}

    async def quiet(self, model_id: str, request: GenerateRequest) -> Call:
        return await quiet(self.rt, self.rt.registry.get(model_id), request, **self.files)

    def stream(self, model_id: str, request: GenerateRequest):
        return run_call(self.rt, self.rt.registry.get(model_id), request, **self.files)




class Relay:
    """Passes a part's events on as the whole answer's: one Start (with the answer's route), the Tokens (timing
    the first), and keeps the part's result (a Solved or a Call) from its Done."""

    def __init__(self, top: Route) -> None:
        self.top, self.started = top, False
        self.t_first: float | None = None
        self.result: Any = None

    def __call__(self, ev: Start | Token | Done[Any]) -> Start | Token | None:
        if isinstance(ev, Start):
            if self.started:
                return None
            self.started = True
            return Start(ev.model, route=self.top)
        if isinstance(ev, Token):
            if self.t_first is None:
                self.t_first = ev.at if ev.at is not None else time.perf_counter()
            return ev
        self.result = ev.result
        return None


__all__ = ["Context", "Relay", "Solved", "Solving"]
