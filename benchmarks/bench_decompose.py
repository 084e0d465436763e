"""Decomposition: how many plans are right, and end-to-end latency vs answering the whole request at once.

22 compound requests (benchmarks/data/compound.jsonl), each with the expected sequence of subtask labels
("summarize this and translate the summary into German" -> summarize, translate). For each, in one run:
  decompose   model auto: the pre-check (two tasks' keywords joined by and/then), the planner
              (qwen2.5-coder-0.5b, output constrained by a JSON schema), then every subtask routed and
              answered in order; a plan is right when its labels equal the expected sequence
  one-routed  model auto with decomposition off: the whole request routed as one task and answered
  one-1.5b    the whole request answered by qwen2.5-coder-1.5b alone
Latency = wall time of the whole answer, greedy, 2 threads; every model the run needs is loaded before
timing starts (so the rows compare plans, not first loads). The pre-check's false-positive rate on the
single-task routing sets is reported too (those requests never pay for the planner).
Answer quality of combined answers is not scored here (no checker for free text); the mixed task suite is.

Rerun:  .venv/bin/python benchmarks/bench_decompose.py
Writes: benchmarks/results/decompose.json and benchmarks/results/decompose.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from results_io import write_results

HERE = Path(__file__).resolve().parent
BIG = "qwen2.5-coder-1.5b"


async def run(items: list[dict]) -> dict:
    from swarm_edge import orchestrator
    from swarm_edge.config import DEFAULT_CONFIG, Settings
    from swarm_edge.engine import Engine
    from swarm_edge.registry import load_registry

    registry = load_registry(DEFAULT_CONFIG)
    engine = Engine(registry, Settings.load(threads=2), budget="6GiB", spare=False, fetch=False)
    await engine.start()
    try:
        for mid in ("qwen2.5-coder-0.5b", BIG, "smollm2-135m"):  # load everything first: compare plans, not loads
            await orchestrator.ask_async("Say OK.", engine, model_id=mid, max_tokens=2)
        await orchestrator.route_async(engine, "warm the router")
        rows = []
        for item in items:
            rec = {"prompt": item["prompt"], "expected": item["subtasks"],
                   "precheck": orchestrator.looks_compound(engine, item["prompt"])}
            for name, kw in (("decompose", {}), ("one-routed", {"decompose": False}), ("one-1.5b", {"model_id": BIG})):
                t0 = time.perf_counter()
                answer = await orchestrator.ask_async(item["prompt"], engine, **kw)
                rec[name] = {"latency_s": round(time.perf_counter() - t0, 3), "plan": answer.plan,
                             "models": [s["model"] for s in answer.steps], "text": answer.text[:500]}
                if name == "decompose":
                    planner = next((s for s in answer.steps if s["role"] == "planner"), None)
                    rec["planned"] = planner.get("subtasks") if planner else None
                    rec["plan_right"] = rec["planned"] == item["subtasks"] and answer.plan == "decompose"
            print(f"  {'right' if rec['plan_right'] else 'WRONG'} {rec['planned']} expected {item['subtasks']}: "
                  + ", ".join(f"{n} {rec[n]['latency_s']:.1f}s" for n in ("decompose", "one-routed", "one-1.5b")),
                  file=sys.stderr, flush=True)
            rows.append(rec)
        return {"rows": rows}
    finally:
        await engine.close()


def false_positives() -> tuple[int, int]:
    """Single-task prompts of the routing sets that the pre-check would send to the planner."""
    from swarm_edge import orchestrator
    from swarm_edge.config import DEFAULT_CONFIG
    from swarm_edge.registry import load_registry
    from swarm_edge.router import Router

    class Lite:  # what looks_compound reads: the registry and the keyword rules (no models)
        registry = load_registry(DEFAULT_CONFIG)
        router = Router(registry)

    rows = [json.loads(x) for name in ("route_dev.jsonl", "route_heldout.jsonl")
            for x in (HERE.parent / "tests" / "data" / name).read_text().splitlines() if x.strip()]
    return sum(orchestrator.looks_compound(Lite, r["prompt"]) for r in rows), len(rows)


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    items = [json.loads(x) for x in (HERE / "data" / "compound.jsonl").read_text().splitlines() if x.strip()]
    data = asyncio.run(run(items))
    rows = data["rows"]
    fp, n_single = false_positives()
    right = sum(r["plan_right"] for r in rows)
    med = {n: statistics.median(r[n]["latency_s"] for r in rows) for n in ("decompose", "one-routed", "one-1.5b")}
    mean = {n: statistics.fmean(r[n]["latency_s"] for r in rows) for n in ("decompose", "one-routed", "one-1.5b")}
    lines = ["# Decomposition of compound requests (rerun: .venv/bin/python benchmarks/bench_decompose.py)", "",
             f"- plans right (labels in order equal the expected sequence): **{right}/{len(rows)}**",
             f"- pre-check sent to the planner: {sum(r['precheck'] for r in rows)}/{len(rows)} compound requests, "
             f"{fp}/{n_single} single-task routing-set prompts", "",
             "| plan | mean latency s | median s | mean vs decompose |", "|---|---|---|---|"]
    for n in ("decompose", "one-routed", "one-1.5b"):
        lines.append(f"| {n} | {mean[n]:.2f} | {med[n]:.2f} | {mean[n] / mean['decompose']:.2f} |")
    lines += ["", "| expected | planned | decompose s | one-routed s | one-1.5b s |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {' -> '.join(r['expected'])} | {' -> '.join(r['planned'] or ['-'])} "
                     f"| {r['decompose']['latency_s']:.1f} | {r['one-routed']['latency_s']:.1f} "
                     f"| {r['one-1.5b']['latency_s']:.1f} |")
    write_results("decompose", {"plans_right": right, "items": len(rows), "precheck_false_positives": [fp, n_single],
                                "mean_latency_s": mean, "median_latency_s": med, "rows": rows}, lines)


if __name__ == "__main__":
    main()
