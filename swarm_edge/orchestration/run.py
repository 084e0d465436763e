"""The run loop of one request: decide (plan.py), do what the decision needs (route, read, plan, the cloud), and
run the plan. Yields Start (once the model whose output the caller sees has the prompt: callers can still turn
queue and budget errors into proper answers before they commit to a streamed response), Tokens, then Done(Answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator

from swarm_edge.errors import BudgetError, BusyError, CloudUnavailableError, InferenceError, ModelLoadError
from swarm_edge.events import Done, Start, Token
from swarm_edge.orchestration import multistep, shape
from swarm_edge.orchestration.answer import Answer, Step, assemble
from swarm_edge.orchestration.calls import Call, run_call
from swarm_edge.orchestration.context import Context, Relay, Solved
from swarm_edge.orchestration.escalation import Escalation
from swarm_edge.orchestration.fit import fitted
from swarm_edge.orchestration.plan import Subtask, compound, entry, strategy_of
from swarm_edge.orchestration.planner import subtasks_of
from swarm_edge.orchestration.request import Request, with_system
from swarm_edge.orchestration.runtime import Runtime
from swarm_edge.orchestration.strategies import solve
from swarm_edge.router import Route

Events = AsyncGenerator[Start | Token | Done[Answer], None]
# what `on_local_failure` escalates: a crash or failed generation, a load refused by the budget or one that failed
# or timed out, no room or no queue slot in time (BusyError)
LOCAL_FAILURES = (InferenceError, BudgetError, ModelLoadError, BusyError)


async def execute(rt: Runtime, req: Request) -> Events:
    """Answer one request; the Answer carries the escalation's trace and whether anything left the device."""
    ctx = Context(rt, req, Escalation(rt, req.allow_cloud))
    async with contextlib.aclosing(_execute(ctx)) as events:
        async for ev in events:
            if isinstance(ev, Done):
                ev.result.escalation = ctx.esc.trace()
                ev.result.left_device = ctx.esc.left_device
            yield ev


async def _relayed(events: AsyncGenerator, relay: Relay) -> AsyncGenerator[Start | Token, None]:
    async with contextlib.aclosing(events):
        async for ev in events:
            if (out := relay(ev)) is not None:
                yield out


async def _execute(ctx: Context) -> Events:
    rt, req, esc = ctx.rt, ctx.request, ctx.esc
    t0 = time.perf_counter()
    first = entry(req, rt.registry, cloud_configured=esc.client is not None, cloud_allowed=esc.allowed,
                  target=esc.target, why_not=esc.why_not())
    if first.kind == "pipeline":
        assert first.top is not None
        parts = multistep.run(ctx, "pipeline", first.top, list(first.subtasks), req.text, [], t0=t0, t_route=None)
    elif first.kind == "explicit":
        assert first.top is not None
        parts = direct(ctx, first.top, t0)
    else:
        parts = routed(ctx, first.top, first.forced, first.decompose, t0)
    async with contextlib.aclosing(parts) as events:
        async for e in events:
            yield e


async def direct(ctx: Context, top: Route, t0: float) -> Events:
    """One model, streamed: an explicit model id, or the routed model continuing a raw prompt (no template)."""
    spec = ctx.rt.registry.get(top.model)
    req = ctx.request
    request = req.sampling.call(spec, req.messages if req.prompt is None else None, prompt=req.prompt)
    relay = Relay(top)
    called = run_call(ctx.rt, spec, request, sink=req.sink, **ctx.files)  # every token is shown: the direct path
    async with contextlib.aclosing(_relayed(called, relay)) as events:
        async for e in events:
            yield e
    call: Call = relay.result
    steps = [call.step(top.task, "answer", 1.0, shown=True, **shape.verdict(req.sampling, call))]
    yield Done(assemble(call.text, call, top, "single", steps, t0=t0, t_first=relay.t_first,
                        t_end=time.perf_counter(), t_route=None))


async def routed(ctx: Context, top: Route | None, forced: str | None, decompose: bool, t0: float) -> Events:
    """Model "auto" (or "cloud", or a named task): route, maybe escalate, maybe split, then the route's strategy."""
    rt, req, esc = ctx.rt, ctx.request, ctx.esc
    if top is None:
        top = await asyncio.to_thread(lambda: fitted(rt, rt.route(req.text, rt.resident())))
    else:
        top = await asyncio.to_thread(fitted, rt, top)
    t_route = time.perf_counter() - t0
    why = forced or esc.reason_for(top)
    if why and esc.considered(why):
        try:
            async with contextlib.aclosing(escalate(ctx, top, why, t0, t_route, system=not forced)) as events:
                async for e in events:
                    yield e
            return
        except CloudUnavailableError as exc:
            if forced:  # the caller asked for the cloud: there is no device answer to fall back to
                raise
            esc.note(f"cloud unavailable ({exc}); answered on the device")
    if req.prompt is not None:  # a raw completion prompt: no template, no plan; the routed model continues it
        parts = direct(ctx, top, t0)
    else:
        parts = planned(ctx, top, decompose, t0, t_route)
    async with contextlib.aclosing(parts) as events:
        async for e in events:
            yield e


async def planned(ctx: Context, top: Route, decompose: bool, t0: float, t_route: float) -> Events:
    """A compound request's subtasks when it reads as one, else one task answered by its route's strategy."""
    registry, req = ctx.rt.registry, ctx.request
    subtasks: list[Subtask] = []
    step: Step | None = None
    material = ""
    if decompose and registry.router.decompose:
        subtasks, step, material = await subtasks_of(ctx.rt, req.text, cache_prompt=req.sampling.cache_prompt,
                                                     files=ctx.files)
    whole = compound(top, subtasks, step.model if step is not None else None)
    if whole is not None:
        parts = multistep.run(ctx, "decompose", whole, subtasks, material, [step] if step else [], t0=t0,
                              t_route=t_route)
    else:
        parts = one_task(ctx, top, [step] if step else [], t0, t_route)
    async with contextlib.aclosing(parts) as events:
        async for e in events:
            yield e


async def one_task(ctx: Context, top: Route, preface: list[Step], t0: float, t_route: float) -> Events:
    """The route's strategy answers; a local failure before anything was shown goes to the cloud (when allowed
    and cloud.on_local_failure)."""
    strategy = strategy_of(ctx.rt.registry, top.task, structured=shape.applies(ctx.request.sampling))
    relay = Relay(top)
    try:
        answered = solve(ctx, top.task, top, ctx.request.chat(), strategy=strategy)
        async with contextlib.aclosing(_relayed(answered, relay)) as events:
            async for e in events:
                yield e
    except LOCAL_FAILURES as exc:
        esc = ctx.esc
        why = f"local failure: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        if relay.started or not esc.config or not esc.config.on_local_failure or not esc.considered(why):
            raise
        try:
            async with contextlib.aclosing(escalate(ctx, top, why, t0, t_route)) as answered_there:
                async for out in answered_there:
                    yield out
        except CloudUnavailableError as cloud_exc:
            esc.note(f"cloud unavailable ({cloud_exc})")
            raise exc from None
        return
    solved: Solved = relay.result
    yield Done(assemble(solved.call.text, solved.call, top, strategy, preface + solved.steps, t0=t0,
                        t_first=relay.t_first, t_end=time.perf_counter(), t_route=t_route))


async def escalate(ctx: Context, top: Route, why: str, t0: float, t_route: float | None, *,
                   system: bool = True) -> Events:
    """A whole answer from the cloud, with the route's system prompt unless the request brings its own (or
    `system` is False). Raises CloudUnavailableError before its first event."""
    messages = ctx.request.chat()
    spec_route = ctx.rt.registry.routes.get(top.task)
    if system and spec_route is not None:
        messages = with_system(messages, spec_route.system)
    up = ctx.esc.route(top, why)
    relay = Relay(up)
    answered = ctx.esc.answer(messages, ctx.request.sampling, why, top.task, [])
    async with contextlib.aclosing(_relayed(answered, relay)) as events:
        async for e in events:
            yield e
    solved: Solved = relay.result
    yield Done(assemble(solved.call.text, solved.call, up, "cloud", solved.steps, t0=t0, t_first=relay.t_first,
                        t_end=time.perf_counter(), t_route=t_route))


__all__ = ["LOCAL_FAILURES", "direct", "escalate", "execute", "one_task", "planned", "routed"]
