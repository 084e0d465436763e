"""The shape an answer must have: JSON following a schema (structured.py) or tool calls (toolcalls.py). One
place says whether an answer has it, for the cascades' keep rule and for the trace of every shown step."""

from __future__ import annotations

from typing import Any

from swarm_edge.orchestration.calls import Call
from swarm_edge.orchestration.request import Sampling


def applies(sampling: Sampling) -> bool:
    """Whether the request asks for a shape (then no free-text self-checks apply)."""
    return sampling.output is not None or sampling.tools is not None


def problem(sampling: Sampling, call: Call) -> str | None:
    """Why the call's answer does not have the requested shape, or None (also None when none was requested)."""
    if sampling.output is not None:
        return sampling.output.problem(call.text)
    if sampling.tools is not None:
        return sampling.tools.problem(call.stats.tool_calls, call.stats.finish_reason,
                                      bool(call.stats.tool_call_unfinished))
    return None


def verdict(sampling: Sampling, call: Call) -> dict[str, Any]:
    """What a shown step records: nothing without a shape, else whether the answer has it (and why not: a
    generation cut off by max_tokens is the usual reason, the grammar sees to the rest)."""
    if not applies(sampling):
        return {}
    why = problem(sampling, call)
    return {"valid": True} if why is None else {"valid": False, "problem": why}


__all__ = ["applies", "problem", "verdict"]
