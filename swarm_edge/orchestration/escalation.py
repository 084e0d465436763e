"""The cloud fallback inside one request: may it leave the device, why it did (or would have), what happened."""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any

from swarm_edge.errors import CloudUnavailableError
from swarm_edge.events import Done, Start, Token
from swarm_edge.orchestration import shape
from swarm_edge.orchestration.answer import Step
from swarm_edge.orchestration.calls import Call
from swarm_edge.orchestration.request import Msg, Sampling
from swarm_edge.orchestration.runtime import Runtime
from swarm_edge.router import Route
from swarm_edge.workers.base import GenStats

if TYPE_CHECKING:
    from swarm_edge.orchestration.context import Solving

CLOUD = "cloud"


class Escalation:
    """One request's view of the cloud."""

    def __init__(self, rt: Runtime, allowed: bool) -> None:
        self.rt, self.allowed = rt, allowed
        self.client = rt.cloud
        self.config = self.client.config if self.client is not None else None
        self.policy = rt.cloud_policy
        self.target = f"{CLOUD}:{self.config.model}" if self.config else CLOUD
        self.reason: str | None = None
        self.outcome: str | None = None
        self.notes: list[str] = []
        self.result: Any = None
        self.left_device = False

    @property
    def usable(self) -> bool:
        return self.client is not None and self.allowed

    def why_not(self) -> str:
        if self.rt.offline:
            return "offline: no cloud client exists in this process"
        if self.client is None:
            return ("not configured: set SWARM_EDGE_CLOUD_URL and SWARM_EDGE_CLOUD_MODEL, or a cloud: section in "
                    f"{self.rt.registry.path}")
        return "the request says allow_cloud: false"

    def reason_for(self, route: Route) -> str | None:
        """Why a routed request should go to the cloud (router unsure, a hard task), or None."""
        cfg = self.policy
        if cfg is None:
            return None
        if route.task in cfg.hard_tasks:
            return f"task {route.task!r} is one of cloud.hard_tasks"
        if cfg.escalate_below is not None and route.confidence < cfg.escalate_below:
            return f"router unsure: confidence {route.confidence:.2f} < {cfg.escalate_below}"
        return None

    def considered(self, why: str) -> bool:
        """Record a reason to escalate; True if the request may actually go (else the trace says why not)."""
        if self.usable:
            return True
        if self.reason is None:
            self.reason, self.outcome = why, f"stayed on the device: {self.why_not()}"
        return False

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.outcome = "unavailable"

    def trace(self) -> dict[str, Any] | None:
        if self.reason is None and not self.notes:
            return None
        d: dict[str, Any] = {"reason": self.reason, "target": self.target, "outcome": self.outcome}
        if self.result is not None:
            d.update(redacted=self.result.redacted, bytes_sent=self.result.bytes_sent, attempts=self.result.attempts,
                     statuses=self.result.statuses)
        if self.notes:
            d["notes"] = self.notes
        return d

    def route(self, top: Route, why: str) -> Route:
        """The route of an answer that went to the cloud."""
        return Route(task=top.task, model=self.target, target="cloud", confidence=top.confidence,
                     reason=f"{top.reason}; to the cloud: {why}", scores=top.scores)

    async def answer(self, messages: list[Msg], sampling: Sampling, why: str, task: str,
                     steps: list[Step]) -> Solving:
        """The cloud answers (redacted, restored as it streams): Start with its first text, Tokens, then Done.
        Raises CloudUnavailableError only before any text was yielded; a stream that breaks later ends the answer
        there and the trace says so."""
        from swarm_edge.cloud import CloudResult
        from swarm_edge.orchestration.context import Solved

        assert self.client is not None and self.config is not None
        res = CloudResult(self.config.model)
        self.reason, self.result = why, res
        call = Call(self.target)
        texts = self.client.stream_chat(messages, reason=why, max_tokens=sampling.max_tokens,
                                        temperature=sampling.temperature, top_p=sampling.top_p,
                                        stop=list(sampling.stop), seed=sampling.seed, result=res,
                                        response_format=sampling.output.openai() if sampling.output else None,
                                        tools=sampling.tools.wire() if sampling.tools else None)
        try:
            async with contextlib.aclosing(texts):
                async for text in texts:
                    if not call.chunks:
                        yield Start(call.model)
                    call.chunks.append(text)
                    yield Token(text)
        except CloudUnavailableError as exc:
            if not call.chunks:
                raise
            self.note(str(exc))
            res.finish_reason = "error"
        finally:
            self.left_device = self.left_device or res.left_device
        if self.outcome is None:
            self.outcome = "answered"
        if not call.chunks:
            yield Start(call.model)
        call.text = "".join(call.chunks)
        call.stats = GenStats(finish_reason=res.finish_reason, chunks=res.tokens,
                              prompt_tokens=(res.usage or {}).get("prompt_tokens"),
                              tool_calls=[cloud_call(c) for c in res.tool_calls] or None)
        call.timings = {"ttft_s": res.ttft_s, "generate_s": res.total_s, "total_s": res.total_s}
        steps.append(call.step(task, "cloud", None, shown=True, reason=why, redacted=res.redacted,
                               attempts=res.attempts, bytes_sent=res.bytes_sent,
                               **shape.verdict(sampling, call)))
        yield Done(Solved(call, steps))


def cloud_call(call: dict[str, Any]) -> dict[str, Any]:
    """A cloud tool call as the device's: {name, arguments} with the arguments parsed (left as text, and then
    invalid for the schema, when the cloud sent something that is not JSON)."""
    try:
        args: Any = json.loads(call.get("arguments") or "{}")
    except ValueError:
        args = call.get("arguments")
    return {"name": call.get("name") or "", "arguments": args}


__all__ = ["CLOUD", "Escalation", "cloud_call"]
