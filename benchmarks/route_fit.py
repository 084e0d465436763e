"""Choosing a shape route (`json`, `tools`) by evidence, with the rule `swarm-edge tune` uses (tune/decide.py):
each model alone, and each cascade (a faster model first, kept when judge.keeps would keep it: a valid answer with
a mean token log-prob at or above the threshold) with its threshold fitted, all simulated from the models'
measured dev answers; the fastest option within --epsilon answers of the best wins.

Also the resumable case log the long benchmarks write as they go (benchmarks/results/cases/NAME.jsonl, kept in git:
every case's answer and verdict behind a table): a run that is cut off continues where it stopped when started
again with the same name, on this machine or another.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

CACHE = Path(__file__).resolve().parent / "results" / "cases"


class CaseLog:
    """One JSON line per finished case, keyed by (configuration, case id)."""

    def __init__(self, name: str, fresh: bool = False) -> None:
        CACHE.mkdir(parents=True, exist_ok=True)
        self.path = CACHE / f"{name}.jsonl"
        if fresh and self.path.exists():
            self.path.unlink()
        self.done: dict[tuple[str, str], dict] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:  # a line cut off by a kill: that case runs again
                    continue
                self.done[(rec["config"], rec["id"])] = rec
            # rewritten without the cut line, so the next record starts a line of its own
            self.path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.done.values()),
                                 encoding="utf-8")

    def get(self, config: str, case_id: str) -> dict | None:
        return self.done.get((config, case_id))

    def add(self, rec: dict) -> None:
        self.done[(rec["config"], rec["id"])] = rec
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def fit(task: str, results: dict[str, list[dict]], epsilon: int | None = None) -> list[str]:
    """The decision for `task` from measured dev records ({model: [{id, ok, latency_s, sure, problem}]}), as
    table lines. epsilon None: one standard error of the best option's count, sqrt(n p (1 - p)) rounded: options
    that close to the best are not told apart by n answers, and the faster wins."""
    from swarm_edge.tune.decide import decide

    records = [{"task": task, "model": model, "variant": "plain", "split": "dev", "id": r["id"], "ok": r["ok"],
                "latency_s": r["latency_s"], "sure": r.get("sure"),
                "flags": [r["problem"]] if r.get("problem") else []}
               for model, recs in results.items() for r in recs]
    how = f"epsilon {epsilon}"
    if epsilon is None:
        best = max(decide(records, task, list(results), epsilon=0).options, key=lambda o: o.correct)
        epsilon = round(math.sqrt(best.correct * (best.n - best.correct) / max(1, best.n)))
        how = f"epsilon {epsilon}: one standard error of the best, {best.correct}/{best.n}"
    d = decide(records, task, list(results), epsilon=epsilon)
    lines = [f"## `{task}` route, chosen on dev (the rule of `swarm-edge tune`, {how})", "",
             "| option | right | mean latency (s) |", "|---|---:|---:|"]
    for o in d.options:
        lines.append(f"| {o.label()} | {o.correct}/{o.n} | {o.latency_s:.2f} |")
    lines += ["", f"Chosen: **{d.chosen.label()}**. {d.why}"]
    lines += [f"- no route: {k}: {v}" for k, v in d.dominated.items()]
    return lines
