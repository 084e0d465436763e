"""The ensemble: every model of the route answers, held back; label answers are voted on (ties: the surest
model), free text is chosen by mean log-probability."""

from __future__ import annotations

from collections import Counter

from swarm_edge.events import Done
from swarm_edge.orchestration.answer import Step
from swarm_edge.orchestration.calls import Call, replay
from swarm_edge.orchestration.context import Context, Solved, Solving
from swarm_edge.orchestration.request import LABEL_PUNCTUATION, Msg
from swarm_edge.router import Route

LABEL_TASKS = ("classify",)


def label(text: str) -> str:
    """An answer's label: its first line, lower-cased, without punctuation."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return LABEL_PUNCTUATION.sub("", first).strip().lower()


def vote(task: str, calls: list[Call]) -> Call:
    """The majority label for label tasks (ties and free text: the surest answer)."""
    def sureness(c: Call) -> float:
        return c.stats.mean_logprob if c.stats.mean_logprob is not None else -1e9

    if task not in LABEL_TASKS:
        return max(calls, key=sureness)
    labels = {id(c): label(c.text) for c in calls}
    counts = Counter(labels.values())
    top = max(counts.values())
    return max((c for c in calls if counts[labels[id(c)]] == top), key=sureness)


async def run(ctx: Context, task: str, route: Route, models: list[str], messages: list[Msg],
              tried: list[Step]) -> Solving:
    registry, sampling = ctx.rt.registry, ctx.request.sampling
    calls = [await ctx.quiet(mid, sampling.call(registry.get(mid), messages, logprobs=True)) for mid in models]
    winner = vote(task, calls)
    steps = tried + [c.step(task, "vote", route.confidence, shown=c is winner, chosen=c is winner) for c in calls]
    for ev in replay(winner):
        yield ev
    yield Done(Solved(winner, steps))


__all__ = ["label", "run", "vote"]
