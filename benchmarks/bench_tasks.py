"""The task suite: accuracy, mean latency and peak memory of the swarm (`auto`) vs each model alone.

The evaluation sets' single-task requests (benchmarks/evalsets.py, `tasks`: 365 items, >= 42 per task, written
by someone who never saw the router or the prompts), the dev or the frozen test split (its sha256 printed);
checks in swarm_edge/checks.py: numbers, words that must appear, labels, Python that must pass its tests
(sandboxed). `--suite legacy` runs the project's older 65-item suite (benchmarks/data/task_suite.jsonl), written
alongside the system: it flatters it.

Configurations, each run in its own fresh process, one after the other in one run:
  auto                the default swarm: router, plans, each route's model with its prompt or tool (models.yaml)
  auto-small          the same without qwen2.5-coder-1.5b (its routes go to qwen2.5-coder-0.5b)
  auto@BUDGET         auto inside a memory budget (e.g. auto@2.5GiB: room for the 1.5B, not for it and the 0.5B)
  1.5b-routed         the router and task prompts and tools, but every route answered by qwen2.5-coder-1.5b
  MODEL               one model alone, the raw prompt, no system prompt (what a one-model runtime gives)
Latency = wall time of one request end to end (routing, planning, loads, every cascade step), 2 threads,
greedy. Peak memory = the highest PSS of the configuration's process tree (the engine, its forkserver and
workers, the in-process router), sampled from outside every 0.25 s. Model loads happen on first use and are
part of the latency; their total is reported too.

Rerun:  .venv/bin/python benchmarks/bench_tasks.py --split test [--configs auto qwen2.5-coder-1.5b ...] [--limit N]
Writes: benchmarks/results/tasks-SPLIT.json and .md (legacy: tasks.json and tasks.md)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import evalsets
from results_io import write_results

from swarm_edge.checks import check

SUITE = Path(__file__).resolve().parent / "data" / "task_suite.jsonl"
BIG = "qwen2.5-coder-1.5b"
DEFAULT_CONFIGS = ["auto", "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "smollm2-135m"]


def load_suite(limit: int | None = None, split: str | None = None) -> list[dict]:
    if split is None:  # the legacy suite
        items = [json.loads(line) for line in SUITE.read_text().splitlines() if line.strip()]
    else:
        items = evalsets.load("tasks", split)
    return items[:limit] if limit else items


def registry_for(config: str):
    """The registry a configuration runs with, and the model id its requests name."""
    from swarm_edge.config import DEFAULT_CONFIG
    from swarm_edge.registry import load_registry

    registry = load_registry(DEFAULT_CONFIG)
    if config == "auto" or config.startswith("auto@"):
        return registry, "auto"
    if config == "auto-small":
        for task, r in registry.routes.items():
            kept = [m for m in r.models if m != BIG] or ["qwen2.5-coder-0.5b"]
            registry.routes[task] = r.model_copy(update={"models": kept})
        return registry, "auto"
    if config == "1.5b-routed":
        for task, r in registry.routes.items():
            registry.routes[task] = r.model_copy(update={"models": [BIG], "strategy": "single"})
        return registry, "auto"
    registry.get(config)  # raises for an unknown id
    return registry, config


async def run_config(config: str, items: list[dict], budget: str) -> list[dict]:
    """Answer every item with one configuration in this process; one record per item."""
    from swarm_edge import orchestrator
    from swarm_edge.config import Settings
    from swarm_edge.engine import Engine

    registry, model_id = registry_for(config)
    if "@" in config:
        budget = config.split("@", 1)[1]
    engine = Engine(registry, Settings.load(threads=2), budget=budget, spare=False, fetch=False)
    await engine.start()
    out = []
    try:
        for item in items:
            t0 = time.perf_counter()
            try:
                answer = await orchestrator.ask_async(item["prompt"], engine, model_id=model_id, decompose=False)
                text, err = answer.text, None
            except Exception as exc:  # a failed answer is a wrong answer; say why
                answer, text, err = None, "", f"{type(exc).__name__}: {exc}"
            latency = time.perf_counter() - t0
            ok, note = check(item, text) if err is None else (False, err)
            steps = answer.steps if answer else []
            out.append({"id": item["id"], "task": item["task"], "ok": ok, "note": note, "latency_s": round(latency, 3),
                        "routed_task": answer.route.task if answer else None, "plan": answer.plan if answer else None,
                        "models": [s["model"] for s in steps], "answer_model": answer.model if answer else None,
                        "escalated": any(s.get("accepted") is False for s in steps),
                        "load_s": round(sum((s["timings"] or {}).get("load_s") or 0 for s in steps), 3),
                        "tokens": sum(s.get("tokens", 0) for s in steps), "answer": text[:400]})
            print(f"  {config:<20} {item['id']:<13} {'ok ' if ok else 'BAD'} {latency:6.2f}s "
                  f"{'+'.join(out[-1]['models'])}", file=sys.stderr, flush=True)
    finally:
        await engine.close()
    return out


def tree_pss(pid: int) -> int:
    import psutil

    total = 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def measure(config: str, limit: int | None, budget: str, split: str | None) -> dict:
    """Run one configuration in a child process and sample its tree's PSS from here."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out_path = f.name
    cmd = [sys.executable, __file__, "--child", config, "--out", out_path, "--budget", budget]
    if limit:
        cmd += ["--limit", str(limit)]
    cmd += ["--split", split] if split else ["--suite", "legacy"]
    proc = subprocess.Popen(cmd)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_pss(proc.pid))
            done.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rc = proc.wait()
    done.set()
    sampler.join()
    if rc != 0:
        raise SystemExit(f"configuration {config} failed (exit code {rc})")
    records = json.loads(Path(out_path).read_text())
    os.unlink(out_path)
    n = len(records)
    by_task: dict[str, list[bool]] = {}
    for r in records:
        by_task.setdefault(r["task"], []).append(r["ok"])
    return {"config": config, "items": n, "accuracy": round(sum(r["ok"] for r in records) / n, 4),
            "correct": sum(r["ok"] for r in records),
            "mean_latency_s": round(statistics.fmean(r["latency_s"] for r in records), 3),
            "median_latency_s": round(statistics.median(r["latency_s"] for r in records), 3),
            "load_s_total": round(sum(r["load_s"] for r in records), 2),
            "mean_latency_without_loads_s": round(statistics.fmean(r["latency_s"] - r["load_s"] for r in records), 3),
            "peak_pss_bytes": peak, "escalated": sum(r["escalated"] for r in records),
            "used_big_model": sum(BIG in r["models"] for r in records),
            "routing_accuracy": round(sum(r["routed_task"] == r["task"] for r in records) / n, 4)
            if config.startswith(("auto", "1.5b-routed")) else None,
            "per_task": {t: f"{sum(v)}/{len(v)}" for t, v in by_task.items()}, "records": records}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    ap.add_argument("--limit", type=int, default=None, help="only the first N items (a quick look)")
    ap.add_argument("--budget", default="6GiB")
    ap.add_argument("--split", choices=["dev", "test"], help="the evaluation sets' split (unless --suite legacy)")
    ap.add_argument("--suite", choices=["eval", "legacy"], default="eval")
    ap.add_argument("--name", default=None, help="results file name (default tasks-SPLIT; legacy: tasks)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.suite == "eval" and not args.split:
        ap.error("--split dev or --split test (or --suite legacy)")
    split = args.split if args.suite == "eval" else None
    items = load_suite(args.limit, split)
    if args.child:
        Path(args.out).write_text(json.dumps(asyncio.run(run_config(args.child, items, args.budget))))
        return
    announce = evalsets.announce(split) if split else "legacy suite (written alongside the system)"
    print(announce, file=sys.stderr)
    results = [measure(c, args.limit, args.budget, split) for c in args.configs]
    mib = 1024 * 1024
    ref = next((r for r in results if r["config"] == BIG), None)
    rerun = "--suite legacy" if split is None else f"--split {split}"
    if args.name or args.configs != DEFAULT_CONFIGS:
        rerun += f" --configs {' '.join(args.configs)}" + (f" --name {args.name}" if args.name else "")
    rerun += (f" --budget {args.budget}" if args.budget != "6GiB" else "") + \
        (f" --limit {args.limit}" if args.limit else "")
    lines = [f"# Task suite: {len(items)} items, greedy, 2 threads ({platform.machine()}, "
             f"{os.cpu_count()} cores); rerun: .venv/bin/python benchmarks/bench_tasks.py {rerun}", "",
             f"{announce}.", "",
             "| config | accuracy | mean latency s | vs 1.5B | without loads s | peak PSS MiB | vs 1.5B "
             "| used 1.5B | escalated | per task |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lat = f"{r['mean_latency_s'] / ref['mean_latency_s']:.2f}" if ref else "-"
        mem = f"{r['peak_pss_bytes'] / ref['peak_pss_bytes']:.2f}" if ref and ref["peak_pss_bytes"] else "-"
        per = ", ".join(f"{t} {v}" for t, v in r["per_task"].items())
        lines.append(f"| {r['config']} | {r['correct']}/{r['items']} = {r['accuracy']:.3f} | {r['mean_latency_s']:.2f} "
                     f"| {lat} | {r['mean_latency_without_loads_s']:.2f} | {r['peak_pss_bytes'] / mib:.0f} | {mem} "
                     f"| {r['used_big_model']} | {r['escalated']} | {per} |")
    write_results(args.name or ("tasks" if split is None else f"tasks-{split}"),
                  {"suite": "legacy" if split is None else "eval", "split": announce, "items": len(items),
                   "budget": args.budget, "results": results}, lines)


if __name__ == "__main__":
    main()
