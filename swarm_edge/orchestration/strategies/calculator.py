"""The calculator: a model writes one arithmetic expression, calc.py evaluates it. The request's models are tried
in turn (each but the last measured against the route's threshold); None when none wrote a usable expression."""

from __future__ import annotations

from swarm_edge import calc
from swarm_edge.orchestration.answer import Step
from swarm_edge.orchestration.calls import Call
from swarm_edge.orchestration.context import Context
from swarm_edge.orchestration.request import Msg
from swarm_edge.router import Route

CALC_SYSTEM = ("Reply with one arithmetic expression that computes the answer. "
               "Use numbers, + - * / and parentheses only.")
CALC_EXAMPLES = [  # one worked pair: small models copy the form of an example far better than they follow rules
    {"role": "user", "content": "A book costs $12 and a pen costs $3. How much do 2 books and 4 pens cost in dollars?"},
    {"role": "assistant", "content": "2 * 12 + 4 * 3"},
]
MAX_TOKENS = 64


def value_of(text: str) -> tuple[str | None, str | None]:
    """(expression, its shown value) from what a model wrote; (None, None) when there is none or it fails."""
    expr = calc.expression_in(text)
    try:  # bounded and cheap (calc.py: < 1 ms worst case measured), so it runs on the loop
        return (expr, calc.show(calc.evaluate(expr))) if expr is not None else (None, None)
    except calc.CalcError:
        return None, None


async def attempt(ctx: Context, task: str, route: Route, models: list[str], messages: list[Msg],
                  threshold: float) -> tuple[Call | None, list[Step]]:
    """(the call showing "expr = value", the attempts' steps), or (None, the failed attempts' steps)."""
    tried: list[Step] = []
    prompt = [{"role": "system", "content": CALC_SYSTEM}, *CALC_EXAMPLES, *messages]
    sampling = ctx.request.sampling
    for i, mid in enumerate(models):
        last = i == len(models) - 1
        request = sampling.call(ctx.rt.registry.get(mid), prompt, max_tokens=MAX_TOKENS,
                                logprobs=not last or sampling.logprobs)
        call = await ctx.quiet(mid, request)
        expr, value = value_of(call.text)
        sure = call.stats.mean_logprob
        keep = expr is not None and (last or sure is None or sure >= threshold)
        tried.append(call.step(task, "calculator", route.confidence, shown=keep, wrote=call.text[:200],
                               expression=expr, accepted=keep))
        if keep:
            call.show(f"{expr} = {value}\nAnswer: {value}")
            return call, tried
    return None, tried


__all__ = ["CALC_EXAMPLES", "CALC_SYSTEM", "attempt", "value_of"]
