"""The Answer a request produces, and its Steps: one per model call (or reading), as a trace shows them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from swarm_edge.model_session import rounded
from swarm_edge.router import Route

TIMINGS_SUMMED = ("files_s", "queue_s", "load_s")


@dataclass
class Step(Mapping[str, Any]):
    """One entry of a trace's `steps`. Reads like the dict it serialises to (`step["role"]`).

    `shown`: its text is (part of) what the caller saw; the answer's token count sums the shown steps.
    `extra`: what this kind of step adds (accepted, threshold, chosen, expression, reason, subtask, ...), in order.
    """

    task: str
    model: str | None
    role: str
    confidence: float | None = None
    tokens: int = 0
    timings: dict[str, Any] = field(default_factory=dict)
    mean_logprob: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    shown: bool = False

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"task": self.task, "model": self.model, "role": self.role,
                             "confidence": self.confidence, "tokens": self.tokens, "timings": self.timings}
        if self.mean_logprob is not None:
            d["mean_logprob"] = self.mean_logprob
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Step:
        """From a trace's step (the daemon's JSON); every key it does not name stays in `extra`."""
        core = ("task", "model", "role", "confidence", "tokens", "timings", "mean_logprob")
        return cls(**{k: d[k] for k in core if k in d}, extra={k: v for k, v in d.items() if k not in core})

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


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
    plan: str = "single"
    steps: list[Step] = field(default_factory=list)
    escalation: dict[str, Any] | None = None  # the cloud fallback: why, what was redacted, what happened
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # [{name, arguments}]: the answer calls tools

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what `ask --json` prints)."""
        return {"text": self.text, "model": self.model, "route": self.route.to_dict(),
                "finish_reason": self.finish_reason, "timings": self.timings, "tokens": self.tokens,
                "prompt_tokens": self.prompt_tokens, "left_device": self.left_device, "plan": self.plan,
                "steps": [s.to_dict() for s in self.steps], "escalation": self.escalation,
                **({"tool_calls": self.tool_calls} if self.tool_calls else {})}

    def trace(self) -> dict[str, Any]:
        """The `swarm` object of API responses: who answered, why, every step, and where the time went."""
        return {"model": self.model, "route": self.route.to_dict(), "plan": self.plan,
                "steps": [s.to_dict() for s in self.steps], "timings": self.timings, "tokens": self.tokens,
                "prompt_tokens": self.prompt_tokens, "left_device": self.left_device, "escalation": self.escalation}

    @classmethod
    def from_trace(cls, trace: Mapping[str, Any], text: str, finish_reason: str) -> Answer:
        """An Answer from an API response's `swarm` object (what the daemon sent), its text and finish reason."""
        return cls(text=text, model=trace["model"], route=Route.from_dict(trace["route"]),
                   finish_reason=finish_reason, timings=trace.get("timings") or {}, tokens=trace.get("tokens") or 0,
                   prompt_tokens=trace.get("prompt_tokens"), left_device=bool(trace.get("left_device")),
                   plan=trace.get("plan", "single"), steps=[Step.from_dict(s) for s in trace.get("steps") or []],
                   escalation=trace.get("escalation"))


def assemble(text: str, last: Any, top: Route, plan: str, steps: list[Step], *, t0: float, t_first: float | None,
             t_end: float, t_route: float | None) -> Answer:
    """The Answer: the shown text, the model of its last shown part (`last`, a Call), timings summed over every
    step, tokens over the shown ones."""
    def total(key: str) -> float | None:
        vals = [s.timings.get(key) for s in steps if s.timings]
        return rounded(sum(v for v in vals if v is not None)) if vals else None

    timings = {"route_s": rounded(t_route), **{k: total(k) for k in TIMINGS_SUMMED},
               "ttft_s": rounded(t_first - t0 if t_first else None),
               "model_ttft_s": last.timings.get("model_ttft_s"), "decode_tok_s": last.timings.get("decode_tok_s"),
               "generate_s": total("generate_s"), "total_s": rounded(t_end - t0)}
    return Answer(text=text, model=last.model, route=top, finish_reason=last.stats.finish_reason,
                  tokens=sum(s.tokens for s in steps if s.shown), prompt_tokens=last.stats.prompt_tokens,
                  timings=timings, plan=plan, steps=steps, tool_calls=list(last.stats.tool_calls or []))


__all__ = ["Answer", "Step", "assemble"]
