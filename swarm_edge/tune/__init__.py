"""swarm-edge tune: measure every model on every task of labelled examples, then write the route table by rule.

Examples are JSONL, one request per line: {"prompt", "task", "check", ...the check's fields (checks.py)},
optionally "id". They are split into dev and test by a fixed hash of the id (of the prompt when there is none)
*before* anything is measured; decisions read dev only, test is reported beside it.

Measuring: for each task, each generation model and each variant of the task's route (no system prompt; the
route's system prompt; the calculator tool where the route has one), every example is answered as that task
(routing bypassed), greedy, each prompt evaluated afresh, with the mean token log-prob recorded. Results are
cached per (model file, variant, prompt, settings), so a re-run with another rule costs nothing.

The rule, per task (decide()), on dev only; latency excludes model loads:
1. Options are asked one way each (a variant: plain, the route's system prompt, its tool), as models.yaml
   can only say it per route.
2. A model right on no more dev examples than another asked the same way that is as fast or faster is
   dominated: it gets no option (so no route) for the task.
3. Options: each remaining model alone, and each cascade faster -> slower model with the threshold on the
   first model's mean token log-prob (an answer that repeats its input, that a self-check flags
   (selfcheck.py), or a calculator try with no expression, is never kept) that maximises dev accuracy, the
   lower mean latency breaking ties. (A calculator cascade is approximated: the first model's measured
   answer, its plain fallback included, then the second model's.)
4. The route is the fastest option whose dev accuracy is within `epsilon` examples of the best option's;
   ties go to the plain request (a system prompt or tool stays only where it measurably helps), then to
   fewer models.

Then across tasks (consolidate()): every model a route names stays resident once used, and peak memory is
the sum of the resident models. A model that only some routes name is dropped when each of those tasks has
an option (rule 3's, or a model alone that rule 2 ruled out for being slower) within `epsilon` of that task's
best that uses only models the other routes keep; the task then takes the fastest such option. Models are
tried largest file first; a dropped model costs those tasks some latency and, within epsilon, no accuracy.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm_edge.errors import SwarmEdgeError
from swarm_edge.tune.decide import (
    Decision,
    Option,
    _accepted,
    _by,
    _preferred,
    alone,
    check_quality,
    consolidate,
    decide,
    evaluate,
    route_update,
    simulate,
    to_json,
)
from swarm_edge.tune.examples import CHECK_FIELDS, SALT, example_id, load_examples, split_of
from swarm_edge.tune.measure import METHOD, Cache, Variant, fingerprint, measure, run_measure, variants
from swarm_edge.tune.report import report, write_config


@dataclass
class Result:
    """What `swarm-edge tune` decided: per task, the models that left the swarm, the report."""

    decisions: dict[str, Decision]
    dropped: dict[str, str]
    lines: list[str]
    summary: dict[str, Any]


def run_command(settings: Any, registry: Any, examples: Path, *, models: list[str] | None = None, epsilon: int = 1,
                max_tokens: int | None = None, dev_only: bool = False, per_task: bool = False,
                budget: str | None = None, write: Path | None = None,
                say: Callable[[str], None] = print) -> Result:
    """The `swarm-edge tune` command: load, split, measure (a progress bar), decide, consolidate, report, write."""
    from tqdm import tqdm

    from swarm_edge.engine import Engine

    tasks = list(registry.routes)
    exs = load_examples(examples, tasks)
    chosen = models or [m.id for m in registry if m.kind in ("chat", "completion")]
    for m in chosen:
        if registry.get(m).kind not in ("chat", "completion"):
            raise SwarmEdgeError(f"{m} does not generate text (kind {registry.get(m).kind})")
    n_dev = sum(split_of(e) == "dev" for e in exs)
    say(f"{len(exs)} examples: {n_dev} dev, {len(exs) - n_dev} test{' (not measured)' if dev_only else ''};"
        f" models: {', '.join(chosen)}")
    if dev_only:
        exs = [e for e in exs if split_of(e) == "dev"]
    cache = Cache(settings.home / "cache" / "tune.jsonl")
    total = sum(len([v for v in variants(registry.routes[e["task"]])
                     if not (v.system and registry.get(m).kind == "completion")]) for e in exs for m in chosen)
    # a bar on a terminal; elsewhere (CI logs, nohup) tqdm's plain line every 30 s
    bar = tqdm(total=total, desc="measuring", unit="answer", file=sys.stderr, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30.0)
    engine = Engine(registry, settings, budget=budget, spare=False, fetch=False)
    records = run_measure(engine, exs, chosen, cache=cache, max_tokens=max_tokens, on_record=lambda r: bar.update(1))
    bar.close()
    decisions = {t: decide(records, t, chosen, epsilon=epsilon) for t in tasks if any(r["task"] == t for r in records)}
    sizes = {m: sum(f.size for f in registry.get(m).files) for m in chosen}
    dropped = {} if per_task else consolidate(decisions, sizes, epsilon=epsilon)
    lines, summary = report(decisions, records, chosen)
    summary["left_the_swarm"] = dropped
    if write:
        write_config(settings.config_path, write, decisions, registry)
    return Result(decisions, dropped, lines, summary)


__all__ = ["CHECK_FIELDS", "METHOD", "SALT", "Cache", "Decision", "Option", "Result", "Variant", "_accepted", "_by",
           "_preferred", "alone", "check_quality", "consolidate", "decide", "evaluate", "example_id", "fingerprint",
           "load_examples", "measure", "report", "route_update", "run_command", "run_measure", "simulate", "split_of",
           "to_json", "variants", "write_config"]
