"""How one task is answered: the route's strategy (single, cascade, ensemble), the calculator before it when the
route has that tool. Each strategy yields Start (once, for the answer shown), Tokens, then Done(Solved)."""

from __future__ import annotations

import asyncio
import contextlib

from swarm_edge.events import Done
from swarm_edge.orchestration import shape
from swarm_edge.orchestration.answer import Step
from swarm_edge.orchestration.calls import replay
from swarm_edge.orchestration.context import Context, Solved, Solving
from swarm_edge.orchestration.fit import fitting
from swarm_edge.orchestration.plan import order
from swarm_edge.orchestration.request import Msg, has_system, with_system
from swarm_edge.orchestration.strategies import calculator, cascade, ensemble
from swarm_edge.router import Route


async def solve(ctx: Context, task: str, route: Route, messages: list[Msg], *,
                strategy: str = "single") -> Solving:
    """Answer one task by its route's strategy."""
    spec_route = ctx.rt.registry.routes.get(task)
    structured = shape.applies(ctx.request.sampling)
    models = order(route, spec_route, strategy)
    if len(models) > 1:
        models = await asyncio.to_thread(fitting, ctx.rt, models)
    tried: list[Step] = []
    if spec_route is not None and spec_route.tool == "calculator" and not has_system(messages) and not structured:
        call, tried = await calculator.attempt(ctx, task, route, models, messages, spec_route.min_logprob)
        if call is not None:
            for ev in replay(call):
                yield ev
            yield Done(Solved(call, tried))
            return
    if spec_route is not None:
        messages = with_system(messages, spec_route.system)
    if strategy == "ensemble" and len(models) > 1:
        run = ensemble.run(ctx, task, route, models, messages, tried)
    else:  # single is a cascade without tries
        threshold = spec_route.min_logprob if spec_route is not None else 0.0
        run = cascade.run(ctx, task, route, models, messages, tried, threshold, judge_last=strategy == "cascade")
    async with contextlib.aclosing(run) as events:
        async for e in events:
            yield e


__all__ = ["Solved", "solve"]
