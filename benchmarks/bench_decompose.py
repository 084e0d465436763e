"""Decomposition: how many compound requests are planned right, and how many single requests are split.

The evaluation sets (benchmarks/evalsets.py, written by someone who never saw the router or the rules):
`compound` (72 requests in varied phrasing: "..., then ...", "after that", numbered lists, two sentences, other
languages; each with its expected task sequence) and `single` (106 one-task requests built to tempt a splitter:
"translate 'summarize the report and send it'", "Rewrite in the past tense: I wake up, then I make coffee").
Dev and the frozen test split are reported side by side; the rules and split_confidence were set on dev only.

The plan is the one `swarm-edge` runs (swarm_edge/decompose.py): rules cut the request into pieces, the
router's trained head (real minilm-l6 embeddings) routes each one, no model generates anything. A plan is
right when its task sequence equals the expected one; a single request is split when the plan has >= 2 steps.
Also reported: the time to read one request (the pieces' embeddings), median and p95.

Rerun:  SWARM_EDGE_HOME=... .venv/bin/python benchmarks/bench_decompose.py
Writes: benchmarks/results/decompose.json and benchmarks/results/decompose.md
"""

from __future__ import annotations

import argparse
import statistics
import time

import evalsets
from results_io import default_router, write_results

from swarm_edge import decompose


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    registry, spec, files, router = default_router()
    announce = evalsets.announce("dev and test")
    threshold = registry.router.split_confidence

    def route(piece: str) -> tuple[str, float]:
        r = router.route(piece)
        return r.task, r.confidence

    out, lines = {"split_confidence": threshold, "test_sha256": evalsets.frozen()}, [
        "# Decomposition: compound requests planned right, single requests split", "",
        announce, "", f"Rules + the router's head piece by piece (swarm_edge/decompose.py), split_confidence "
        f"{threshold}. Rerun: `.venv/bin/python benchmarks/bench_decompose.py`", "",
        "| split | compound planned right | single requests split | read ms p50 | read ms p95 |",
        "|---|---|---|---|---|"]
    misses = []
    for split in ("dev", "test"):
        times, right, split_ids, rows = [], 0, [], []
        for item in evalsets.load("compound", split):
            t0 = time.perf_counter()
            r = decompose.read(item["prompt"], route, min_confidence=threshold)
            times.append(time.perf_counter() - t0)
            ok = r.tasks == item["subtasks"]
            right += ok
            rows.append({"id": item["id"], "expected": item["subtasks"], "planned": r.tasks, "right": ok})
            if not ok:
                misses.append(f"| {split} | {item['id']} | {' -> '.join(item['subtasks'])} | "
                              f"{' -> '.join(r.tasks) or 'not split'} |")
        singles = evalsets.load("single", split)
        for item in singles:
            t0 = time.perf_counter()
            r = decompose.read(item["prompt"], route, min_confidence=threshold)
            times.append(time.perf_counter() - t0)
            if r.subtasks:
                split_ids.append(item["id"])
                misses.append(f"| {split} | {item['id']} | {item['task']} | {' -> '.join(r.tasks)} |")
        n = len(rows)
        p50 = statistics.median(times) * 1e3
        p95 = sorted(times)[int(0.95 * (len(times) - 1))] * 1e3
        out[split] = {"compound_right": right, "compound": n, "single_split": split_ids, "single": len(singles),
                      "read_ms_p50": round(p50, 2), "read_ms_p95": round(p95, 2), "rows": rows}
        lines.append(f"| {split} | {right}/{n} = {right / n:.3f} | {len(split_ids)}/{len(singles)} "
                     f"| {p50:.1f} | {p95:.1f} |")
    lines += ["", "Misses:", "", "| split | id | expected | planned |", "|---|---|---|---|", *misses]
    write_results("decompose", out, lines)


if __name__ == "__main__":
    main()
