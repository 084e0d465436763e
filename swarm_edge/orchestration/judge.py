"""The one rule for keeping a held-back answer: sure enough, not an echo of its input, no failed self-check.
The cascades use it on the device; `swarm-edge tune` uses it to simulate them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from swarm_edge import selfcheck
from swarm_edge.orchestration.request import Msg, echoes, last_user_text, material


def keeps(sure: float | None, threshold: float, *, echo: bool = False, flags: Sequence[str] = ()) -> bool:
    """Whether an answer is kept. Nothing generated (no log-prob): nothing to be unsure of."""
    return (sure is None or sure >= threshold) and not echo and not flags


def judge(task: str, text: str, sure: float | None, messages: list[Msg], threshold: float, *,
          shaped: bool = False, problem: str | None = None) -> tuple[bool, dict]:
    """(keep, what the step records: accepted, threshold, echo when true, checks when any). An answer that must
    have a shape (`shaped`: JSON by a schema, tool calls) is judged by that (`problem`, shape.py), not by the
    free-text checks."""
    echo = not shaped and echoes(text, messages)  # a rewrite or translation that copies its input
    request = last_user_text(messages)
    if shaped:
        flags = [problem] if problem else []
    else:
        flags = selfcheck.problems(task, request, material(request), text)
    keep = keeps(sure, threshold, echo=echo, flags=flags)
    extra: dict[str, Any] = {"accepted": keep, "threshold": threshold}
    if echo:
        extra["echo"] = True
    if flags:
        extra["checks"] = flags
    return keep, extra


def why_unsure(step: Mapping[str, Any], threshold: float) -> str:
    """A rejected step's reason, in words."""
    if step.get("echo"):
        return "its answer repeats the input"
    if step.get("checks"):
        return "; ".join(step["checks"])
    return f"mean logprob {step.get('mean_logprob', float('nan')):.2f} < {threshold}"


__all__ = ["judge", "keeps", "why_unsure"]
