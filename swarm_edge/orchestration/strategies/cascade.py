"""The cascade: the route's models in order; each but the last answers held back with its token log-probabilities
measured and is kept when judge.py's rule keeps it, else the next model answers. The last model's answer streams;
when the cloud may take over (cloud.on_cascade_unsure) it is judged too, and the cloud answers if it is unsure.
A single model is a cascade without tries."""

from __future__ import annotations

import contextlib

from swarm_edge.errors import CloudUnavailableError
from swarm_edge.events import Done
from swarm_edge.orchestration import shape
from swarm_edge.orchestration.answer import Step
from swarm_edge.orchestration.calls import Call, replay
from swarm_edge.orchestration.context import Context, Solved, Solving
from swarm_edge.orchestration.judge import judge, why_unsure
from swarm_edge.orchestration.request import Msg
from swarm_edge.router import Route


async def judged(ctx: Context, task: str, route: Route, model: str, messages: list[Msg], steps: list[Step],
                 threshold: float, role: str) -> tuple[Call, bool]:
    """A held-back answer with its token log-probs measured, and whether it is sure enough to keep."""
    call = await ctx.quiet(model, ctx.request.sampling.call(ctx.rt.registry.get(model), messages, logprobs=True))
    sampling = ctx.request.sampling
    keep, extra = judge(task, call.text, call.stats.mean_logprob, messages, threshold, shaped=shape.applies(sampling),
                        problem=shape.problem(sampling, call))
    steps.append(call.step(task, role, route.confidence, shown=keep, **extra))
    return call, keep


async def run(ctx: Context, task: str, route: Route, models: list[str], messages: list[Msg], steps: list[Step],
              threshold: float, *, judge_last: bool) -> Solving:
    *tries, final = models
    for mid in tries:
        call, keep = await judged(ctx, task, route, mid, messages, steps, threshold, "cascade")
        if keep:
            for ev in replay(call):
                yield ev
            yield Done(Solved(call, steps))
            return
    cfg = ctx.esc.config
    if judge_last and ctx.esc.usable and cfg is not None and cfg.on_cascade_unsure:
        async with contextlib.aclosing(unsure_to_the_cloud(ctx, task, route, final, messages, steps,
                                                           threshold)) as events:
            async for e in events:
                yield e
        return
    async with contextlib.aclosing(streamed(ctx, task, route, final, messages, steps)) as events:
        async for e in events:
            yield e


async def unsure_to_the_cloud(ctx: Context, task: str, route: Route, final: str, messages: list[Msg],
                              steps: list[Step], threshold: float) -> Solving:
    """The last local model is measured too and held back: if it is unsure as well, the cloud answers (and if the
    cloud is unavailable before its first text, the last local answer is shown after all)."""
    call, keep = await judged(ctx, task, route, final, messages, steps, threshold, "cascade-final")
    if not keep:
        last = steps[-1]
        why = f"cascade: the last local model {final} is unsure too ({why_unsure(last, threshold)})"
        try:
            async with contextlib.aclosing(ctx.esc.answer(messages, ctx.request.sampling, why, task,
                                                          steps)) as events:
                async for e in events:
                    yield e
            return
        except CloudUnavailableError as exc:  # raised only before any cloud text was shown
            ctx.esc.note(f"cloud unavailable ({exc}); the last local answer is shown")
            last.extra["accepted"] = True
            last.shown = True
    for ev in replay(call):
        yield ev
    yield Done(Solved(call, steps))


async def streamed(ctx: Context, task: str, route: Route, model: str, messages: list[Msg],
                   steps: list[Step]) -> Solving:
    """The model's answer, streamed as it comes."""
    call = None
    async with contextlib.aclosing(ctx.stream(model, ctx.request.sampling.call(ctx.rt.registry.get(model),
                                                                               messages))) as events:
        async for ev in events:
            if isinstance(ev, Done):
                call = ev.result
            else:
                yield ev
    assert call is not None
    steps.append(call.step(task, "answer" if not steps else "cascade-final", route.confidence, shown=True,
                           **shape.verdict(ctx.request.sampling, call)))
    yield Done(Solved(call, steps))


__all__ = ["judged", "run", "streamed", "unsure_to_the_cloud"]
