"""Compound requests: how a request reads (decompose.py: rules plus the router, piece by piece), and the optional
planner model, which writes the subtasks as JSON constrained by a JSON schema (a grammar in llama.cpp)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from swarm_edge import decompose
from swarm_edge.orchestration.answer import Step
from swarm_edge.orchestration.calls import Call, quiet
from swarm_edge.orchestration.plan import Subtask
from swarm_edge.orchestration.request import instruction, material
from swarm_edge.orchestration.runtime import Runtime
from swarm_edge.workers.base import GenerateRequest

PLANNER_SYSTEM = (
    "You split a user's request into the separate tasks it asks for, in the order they must be done. "
    "Task types: {tasks}. For each task give its type, a short imperative instruction, and uses_previous: "
    "true if it works on the previous task's output. Answer with JSON only.")

PLANNER_EXAMPLE = [
    {"role": "user", "content": "Request: Fix the grammar of this note and then count how many words it has\n"
                                "Task types named in it, in order: rewrite, math"},
    {"role": "assistant", "content": json.dumps({"subtasks": [
        {"task": "rewrite", "instruction": "Fix the grammar of the note", "uses_previous": False},
        {"task": "math", "instruction": "Count the words in the corrected note", "uses_previous": True}]})},
]
NOT_A_PLAN = "not a usable plan; answered as one request"


def plan_schema(tasks: list[str], max_steps: int = 4) -> dict:
    """The JSON schema the planner's output is constrained to."""
    return {
        "type": "object",
        "properties": {"subtasks": {"type": "array", "minItems": 1, "maxItems": max_steps, "items": {
            "type": "object",
            "properties": {"task": {"type": "string", "enum": tasks},
                           "instruction": {"type": "string"},
                           "uses_previous": {"type": "boolean"}},
            "required": ["task", "instruction", "uses_previous"]}}},
        "required": ["subtasks"],
    }


async def read_request(rt: Runtime, text: str) -> decompose.Reading:
    """How `text` reads (decompose.py): its subtasks when it asks for several tasks, else none.

    Each candidate piece is routed by the runtime's router (the trained head, or the keyword rules without it).
    """
    def route_piece(piece: str) -> tuple[str, float]:
        r = rt.route(piece)
        return r.task, r.confidence

    spec = rt.registry.router
    return await asyncio.to_thread(decompose.read, text, route_piece, min_confidence=spec.split_confidence)


async def make_plan(rt: Runtime, text: str, *, fetch: bool | None = None, progress_factory: Any = None,
                    named: list[str] | None = None, cache_prompt: bool = True) -> tuple[list[dict], Call]:
    """Ask the planner model for the subtasks of `text`: ([{task, instruction, uses_previous}], the planner call).

    `named`: the tasks the reading found, in order (the keyword rules' when None); they go with the request.
    """
    registry = rt.registry
    assert registry.router.planner is not None
    planner = registry.get(registry.router.planner)
    tasks = registry.content_tasks
    head = instruction(text)
    # the reading of the request goes with it: the 0.5B planner alone mixed up summarize and translate
    # in 6 of 22 compound requests (benchmarks/bench_decompose.py, the old suite)
    if named is None:
        named = rt.named_tasks(head)
    messages = [{"role": "system", "content": PLANNER_SYSTEM.format(tasks=", ".join(tasks))}, *PLANNER_EXAMPLE,
                {"role": "user", "content": f"Request: {head}\n"
                                            f"Task types named in it, in order: {', '.join(named) or 'none found'}"}]
    request = GenerateRequest(messages=messages, max_tokens=200, temperature=0.0,
                              json_schema=plan_schema(tasks), cache_prompt=cache_prompt)
    call = await quiet(rt, planner, request, fetch=fetch, progress_factory=progress_factory)
    try:
        subtasks = json.loads(call.text)["subtasks"]
    except (ValueError, KeyError, TypeError):
        return [], call  # cut off by max_tokens: not a plan
    return [s for s in subtasks if isinstance(s, dict) and s.get("task") in registry.routes], call


async def subtasks_of(rt: Runtime, text: str, *, cache_prompt: bool,
                      files: dict[str, Any]) -> tuple[list[Subtask], Step | None, str]:
    """(the subtasks of a compound request, the step that planned them, the material they work on). Fewer than
    two subtasks are no plan; the planner's step still says so."""
    t_read = time.perf_counter()
    reading = await read_request(rt, text)
    if not reading.subtasks:
        return [], None, ""
    if rt.registry.router.planner:
        found, call = await make_plan(rt, text, named=reading.tasks, cache_prompt=cache_prompt, **files)
        subtasks = [Subtask.of(s) for s in found]
        if len(subtasks) < 2:
            return subtasks, call.step("plan", "planner", note=NOT_A_PLAN), ""
        return subtasks, call.step("plan", "planner", subtasks=[s.task for s in subtasks]), material(text)
    subtasks = [Subtask.of(s) for s in reading.subtasks]
    if len(subtasks) < 2:
        return subtasks, None, ""
    step = Step(task="plan", model=None, role="planner", timings={"total_s": round(time.perf_counter() - t_read, 4)},
                extra={"how": "rules + the router's head, piece by piece", "subtasks": [s.task for s in subtasks]})
    return subtasks, step, reading.material


__all__ = ["NOT_A_PLAN", "PLANNER_EXAMPLE", "PLANNER_SYSTEM", "make_plan", "plan_schema", "read_request",
           "subtasks_of"]
