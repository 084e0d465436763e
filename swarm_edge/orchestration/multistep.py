"""Multi-step plans: a pipeline's steps, or a compound request's subtasks, answered in order. Each part runs its
route's strategy; the scheduler is told which models come next (prefetch, furthest-future eviction); every part's
answer is shown, one Start for the whole, SEPARATOR between the parts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator

from swarm_edge.events import Done, Start, Token
from swarm_edge.orchestration.answer import Answer, Step, assemble
from swarm_edge.orchestration.context import Context, Relay, Solved
from swarm_edge.orchestration.fit import fitted, planned
from swarm_edge.orchestration.plan import Subtask, pipeline_prompt, strategy_of, subtask_prompt, subtask_route
from swarm_edge.orchestration.strategies import solve
from swarm_edge.router import Route

SEPARATOR = "\n\n"  # between the shown outputs of a multi-step plan


def part_prompt(kind: str, sub: Subtask, material: str, previous: str | None) -> str:
    if kind == "pipeline":
        return pipeline_prompt(sub, previous if previous is not None else material)
    return subtask_prompt(sub, material, previous)


async def run(ctx: Context, kind: str, top: Route, subtasks: list[Subtask], material: str, steps: list[Step], *,
              t0: float, t_route: float | None) -> AsyncGenerator[Start | Token | Done[Answer], None]:
    """`kind`: "pipeline" (each step's task is fixed) or "decompose" (each subtask is routed again: the router
    picks the model when it agrees on the task)."""
    rt, registry = ctx.rt, ctx.rt.registry
    system = [m for m in (ctx.request.messages or []) if m.get("role") == "system"]
    previous: str | None = None
    shown: list[str] = []
    relay = Relay(top)
    last = None
    try:
        for i, sub in enumerate(subtasks):
            prompt = part_prompt(kind, sub, material, previous)
            routed = await asyncio.to_thread(rt.route, prompt, rt.resident()) if kind == "decompose" else None
            route = await asyncio.to_thread(fitted, rt, subtask_route(sub, routed, registry, i, len(subtasks)))
            later = await asyncio.to_thread(lambda rest: [planned(rt, s.task) for s in rest], subtasks[i + 1:])
            rt.hint([route.model, *later])  # the models that will answer, fitted: not ones the box cannot hold
            if i > 0 and relay.started:
                yield Token(SEPARATOR)
            async with contextlib.aclosing(solve(ctx, sub.task, route, [*system, {"role": "user", "content": prompt}],
                                                 strategy=strategy_of(registry, sub.task))) as events:
                async for ev in events:
                    if (out := relay(ev)) is not None:
                        yield out
            solved: Solved = relay.result
            for s in solved.steps:
                s.extra.update(subtask=i + 1, instruction=sub.instruction or sub.task)
            steps.extend(solved.steps)
            previous, last = solved.call.text, solved.call
            shown.append(previous)
    finally:
        rt.hint([])  # the plan is over (or failed): no model is needed next
    yield Done(assemble(SEPARATOR.join(shown), last, top, kind, steps, t0=t0, t_first=relay.t_first,
                        t_end=time.perf_counter(), t_route=t_route))


__all__ = ["SEPARATOR", "run"]
