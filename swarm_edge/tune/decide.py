"""Deciding for `swarm-edge tune`: the route rule per task (decide()) and across tasks (consolidate()), from measured
records; the package docstring states the rule."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from swarm_edge.errors import ConfigError
from swarm_edge.orchestration.judge import keeps


@dataclass
class Option:
    """One way to serve a task: a model alone, or a cascade cheap -> final, asked one way (variant)."""

    models: list[str]
    variant: str
    strategy: str = "single"
    min_logprob: float | None = None
    correct: int = 0
    n: int = 0
    latency_s: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def label(self) -> str:
        how = f"cascade at mean log-prob {self.min_logprob:.3f}" if self.strategy == "cascade" else "alone"
        return f"{' -> '.join(self.models)} ({self.variant}, {how})"


@dataclass
class Decision:
    task: str
    chosen: Option
    options: list[Option] = field(default_factory=list)
    dominated: dict[str, str] = field(default_factory=dict)
    why: str = ""
    alone: list[Option] = field(default_factory=list)  # every model alone, each way, dominated ones too


def _by(records: list[dict], split: str) -> dict[tuple[str, str], dict[str, dict]]:
    """(model, variant) -> {example id: record} for one split."""
    out: dict[tuple[str, str], dict[str, dict]] = {}
    for r in records:
        if r["split"] == split:
            out.setdefault((r["model"], r["variant"]), {})[r["id"]] = r
    return out


def _accepted(r: dict, threshold: float) -> bool:
    """Whether a cascade keeps the cheap model's answer (judge.keeps, which the cascades use)."""
    if r.get("wrote_expression") is False:
        return False
    return keeps(r.get("sure"), threshold, echo=bool(r.get("echo")), flags=r.get("flags") or ())


def simulate(option: Option, table: dict[tuple[str, str], dict[str, dict]], ids: list[str]) -> tuple[int, float]:
    """(correct, mean latency) of an option on the examples `ids`, from the models' measured answers."""
    correct, total = 0, 0.0
    first = table.get((option.models[0], option.variant), {})
    final = table.get((option.models[-1], option.variant), {})
    ids = [i for i in ids if i in first and i in final]  # a split (or model) without answers counts nothing
    for i in ids:
        total += first[i]["latency_s"]
        if option.strategy == "single" or _accepted(first[i], option.min_logprob or 0.0):
            correct += bool(first[i]["ok"])
        else:
            correct += bool(final[i]["ok"])
            total += final[i]["latency_s"]
    return correct, total / max(1, len(ids))


def _preferred(o: Option) -> tuple:
    """Rule 4's order among options within epsilon: faster, then more right, then plain, then fewer models."""
    return round(o.latency_s, 3), -o.correct, o.variant != "plain", len(o.models)


def decide(records: list[dict], task: str, models: list[str], *, epsilon: int = 1) -> Decision:
    """The route for `task` by the rule in the module docstring, from dev records only."""
    table = _by([r for r in records if r["task"] == task], "dev")
    ids = sorted({i for recs in table.values() for i in recs})
    if not ids:
        raise ConfigError(f"no dev examples for task {task!r}")
    order = ["plain", "system", "calculator"]
    options: list[Option] = []
    dominated: dict[str, str] = {}
    every: list[Option] = []
    for v in sorted({v for _, v in table}, key=lambda v: order.index(v) if v in order else len(order)):
        single = {}
        for m in models:
            if (m, v) in table:
                o = Option([m], v, n=len(ids))
                o.correct, o.latency_s = simulate(o, table, ids)
                single[m] = o
        every += single.values()
        for m, o in single.items():  # rule 2: worse and no faster than another model, asked the same way
            for other, q in single.items():
                if other != m and q.correct >= o.correct and q.latency_s <= o.latency_s and \
                        (q.correct > o.correct or q.latency_s < o.latency_s):  # equal twins both stay
                    dominated[f"{m} ({v})"] = (f"{other} is right on {q.correct}/{len(ids)} at {q.latency_s:.2f} s, "
                                               f"{m} on {o.correct} at {o.latency_s:.2f} s")
                    break
        alive = sorted((m for m in single if f"{m} ({v})" not in dominated), key=lambda m: single[m].latency_s)
        options += [single[m] for m in alive]
        for i, cheap in enumerate(alive):  # rule 3: cascades, a faster model first and a more accurate one after
            for final in alive[i + 1:]:
                sures = sorted({r["sure"] for r in table[(cheap, v)].values() if r.get("sure") is not None})
                best = None
                for t in sures:
                    c = Option([cheap, final], v, "cascade", t, n=len(ids))
                    c.correct, c.latency_s = simulate(c, table, ids)
                    if best is None or (c.correct, -c.latency_s) > (best.correct, -best.latency_s):
                        best = c
                if best is not None:
                    options.append(best)
    top = max(o.correct for o in options)
    # rule 4; ties: the plain request, then fewer models
    chosen = min((o for o in options if o.correct >= top - epsilon), key=_preferred)
    why = (f"the fastest option within {epsilon} dev example(s) of the best ({top}/{len(ids)}): "
           f"{chosen.label()}, {chosen.correct}/{len(ids)} at {chosen.latency_s:.2f} s")
    return Decision(task, chosen, options, dominated, why, every)


def consolidate(decisions: dict[str, Decision], sizes: dict[str, int], *, epsilon: int = 1) -> dict[str, str]:
    """Drop models from the route table where the rule allows it (module docstring); changes `decisions` in
    place and returns {dropped model: why}. `sizes`: each model's file size in bytes (the larger goes first)."""
    dropped: dict[str, str] = {}
    for model in sorted({m for d in decisions.values() for m in d.chosen.models}, key=lambda m: -sizes.get(m, 0)):
        users = [d for d in decisions.values() if model in d.chosen.models]
        kept = {m for d in decisions.values() if model not in d.chosen.models for m in d.chosen.models}
        if not kept:
            continue  # the only model of the table: nothing to share with
        swaps = {}
        for d in users:
            top = max(o.correct for o in d.options)
            fits = [o for o in d.options + d.alone if o.correct >= top - epsilon and set(o.models) <= kept]
            if not fits:
                break
            swaps[d.task] = min(fits, key=_preferred)
        else:
            for d in users:
                was, d.chosen = d.chosen, swaps[d.task]
                d.why = (f"{d.why}; then {model} left the swarm (the other routes keep "
                         f"{', '.join(sorted(kept))} resident), so {d.chosen.label()}, {d.chosen.correct}/"
                         f"{d.chosen.n} at {d.chosen.latency_s:.2f} s (was {was.correct} at {was.latency_s:.2f} s)")
            dropped[model] = (f"only {', '.join(d.task for d in users)} named it, and each has an option within "
                              f"{epsilon} dev example(s) of its best without it")
    return dropped


def evaluate(decision: Decision, records: list[dict], split: str) -> tuple[int, int, float]:
    """(correct, n, mean latency) of a decided route on a split, simulated from the measured answers."""
    table = _by([r for r in records if r["task"] == decision.task], split)
    o = decision.chosen
    ids = sorted(set(table.get((o.models[0], o.variant), {})) & set(table.get((o.models[-1], o.variant), {})))
    if not ids:
        return 0, 0, 0.0
    correct, lat = simulate(o, table, ids)
    return correct, len(ids), lat


def alone(records: list[dict], task: str, model: str, split: str) -> tuple[int, int, float]:
    """A model alone on a task, plain request (what a one-model runtime gives)."""
    recs = [r for r in records if r["task"] == task and r["model"] == model and r["variant"] == "plain"
            and r["split"] == split]
    return sum(bool(r["ok"]) for r in recs), len(recs), statistics.fmean(r["latency_s"] for r in recs) if recs else 0.0


def check_quality(records: list[dict], task: str, split: str = "dev") -> dict[str, dict]:
    """Per model (plain request): how the self-checks did - flagged, precision (flagged answers that were wrong)
    and recall (wrong answers that were flagged)."""
    out = {}
    for model in sorted({r["model"] for r in records if r["task"] == task}):
        recs = [r for r in records if r["task"] == task and r["model"] == model and r["split"] == split
                and r["variant"] == "plain"]
        flagged = [r for r in recs if r.get("flags")]
        wrong = [r for r in recs if not r["ok"]]
        hit = sum(1 for r in flagged if not r["ok"])
        out[model] = {"answers": len(recs), "flagged": len(flagged), "wrong": len(wrong),
                      "precision": round(hit / len(flagged), 3) if flagged else None,
                      "recall": round(hit / len(wrong), 3) if wrong else None}
    return out


def route_update(decision: Decision, route) -> dict[str, Any]:
    """The models.yaml fields of a route that the decision sets."""
    o = decision.chosen
    upd: dict[str, Any] = {"models": list(o.models), "strategy": o.strategy,
                           "system": route.system if o.variant == "system" else "",
                           "tool": route.tool if o.variant == route.tool else None}
    if o.strategy == "cascade":
        upd["min_logprob"] = round(float(o.min_logprob or 0.0), 4)
    return upd


def to_json(d: Decision) -> dict:
    return {"task": d.task, "chosen": asdict(d.chosen), "why": d.why, "dominated": d.dominated,
            "options": [asdict(o) for o in d.options]}
