"""Swap-in latency and estimate accuracy for every default model, one run.

Swap-in: time from a request for a model that is not resident to its first token, through one
long-running engine as in the daemon (forkserver and spare worker up, the model loaded once before), in
two cases - free room, and room that must first be made by evicting the resident model - against the
reference: a fresh `python` process that imports llama_cpp, constructs `Llama` on the same file with the
same n_ctx/n_batch/threads and yields one token (timed from Popen to the token). Runs rotate between the
three; medians are reported. The file is in the page cache for all of them.

Estimate accuracy: the scheduler's estimate (calibrated, and the bare formula) over the worker's peak PSS,
sampled every 10 ms through a load and a request whose prompt fills a whole batch.

Rerun:  .venv/bin/python benchmarks/bench_swap.py [--reps 5]
Writes: benchmarks/results/swap.json and benchmarks/results/swap.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import threading
import time

import psutil
from results_io import write_results

from swarm_edge.config import DEFAULT_CONFIG, Settings
from swarm_edge.engine import Engine
from swarm_edge.registry import load_registry
from swarm_edge.workers import GenerateRequest

PROMPT = "The capital of France is"
MiB = 2**20
REFERENCE = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=int(sys.argv[2]), n_batch=int(sys.argv[3]), n_threads=int(sys.argv[4]),
            n_threads_batch=int(sys.argv[4]), verbose=False)
for chunk in llm.create_completion(prompt=sys.argv[5], max_tokens=1, temperature=0.0, stream=True):
    print("token", flush=True)
    break
"""


def reference(path: str, spec, threads: int) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", REFERENCE, path, str(spec.n_ctx), str(spec.n_batch), str(threads),
                             PROMPT], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    t = time.perf_counter() - t0
    proc.wait()
    if "token" not in line:
        raise RuntimeError("reference process produced no token")
    return t


async def first_token(engine: Engine, model_id: str) -> float:
    t0 = time.perf_counter()
    # aclosing: a stream left suspended would hold its lease (and its model) until garbage collection
    async with contextlib.aclosing(engine.generate(model_id, GenerateRequest(prompt=PROMPT, max_tokens=1))) as events:
        async for event in events:
            if event["type"] == "token":
                return time.perf_counter() - t0
    raise RuntimeError("no token")


async def ours(engine: Engine, model_id: str, evict: str | None) -> float:
    """Request -> first token for a model that is not resident, in a long-running engine (as in the daemon)."""
    sched = engine.scheduler
    for r in list(sched.residents.values()):
        await sched._drop(r)  # start from nothing resident
    sched.budget = 1 << 40
    if evict:
        await first_token(engine, evict)
        # a budget that holds the resident model or the requested one, never both
        need = max(engine.estimate(evict), engine.estimate(model_id))
        sched.budget = engine.base_pss() + need + 64 * MiB  # base PSS moves a little
    await asyncio.sleep(0.3)  # the spare worker is forked and idle, as it is between requests
    return await first_token(engine, model_id)


class WorkerPeak(threading.Thread):
    """Peak PSS of the engine's worker processes (the forkserver's children), sampled every 10 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.done = 0, threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self.done.is_set():
            direct = {c.pid for c in me.children()}
            for child in me.children(recursive=True):
                if child.pid in direct:
                    continue  # the forkserver and helpers, not a model
                try:
                    self.peak = max(self.peak, child.memory_full_info().pss)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            time.sleep(0.01)


async def accuracy(registry, settings, model_id: str) -> dict:
    engine = Engine(registry, settings, budget="90%")
    await engine.start()
    detail = engine.estimate_detail(model_id)
    sampler = WorkerPeak()
    sampler.start()
    try:
        spec = registry.get(model_id)
        if spec.kind == "embedding":
            await engine.embed(model_id, ["a long sentence to embed " * 40] * 8)
        else:
            long_prompt = "Summarise the following notes. " + "The meeting covered budgets and plans. " * 60
            async for _ in engine.generate(model_id, GenerateRequest(prompt=long_prompt, max_tokens=32)):
                pass
        await asyncio.sleep(0.05)
    finally:
        sampler.done.set()
        sampler.join()
        await engine.close()
    peak = sampler.peak
    return {"model": model_id, "estimate": detail.bytes, "source": detail.source, "formula": detail.formula_bytes,
            "peak_pss": peak, "ratio": detail.bytes / peak, "formula_ratio": detail.formula_bytes / peak}


async def main_async(reps: int) -> dict:
    settings = Settings.load()
    registry = load_registry(settings.config_path if settings.config_path.exists() else DEFAULT_CONFIG)
    gguf = [m.id for m in registry if m.format == "gguf"]
    warm = Engine(registry, settings, budget="90%")
    await warm.start()
    for m in gguf:  # fetch + calibrate, so no swap below includes the one-time calibration probe
        await first_token(warm, m)
    await warm.embed("minilm-l6", ["x"])
    await warm.close()
    swap = []
    engine = Engine(registry, settings, budget="90%")
    await engine.start()
    for m in gguf:
        other = "smollm2-135m" if m != "smollm2-135m" else "qwen2.5-coder-0.5b"
        path = str(warm.files(m)["model"])
        spec = registry.get(m)
        runs: dict[str, list[float]] = {"reference": [], "free": [], "evict": []}
        print(f"swap-in {m} ...", file=sys.stderr, flush=True)
        for i in range(reps):
            order = ["reference", "free", "evict"]
            for kind in order[i % 3:] + order[:i % 3]:
                if kind == "reference":
                    runs[kind].append(await asyncio.to_thread(reference, path, spec, settings.threads))
                else:
                    runs[kind].append(await ours(engine, m, other if kind == "evict" else None))
        med = {k: statistics.median(v) for k, v in runs.items()}
        swap.append({"model": m, "runs": runs, **{f"{k}_s": v for k, v in med.items()},
                     "free_ratio": med["free"] / med["reference"], "evict_ratio": med["evict"] / med["reference"]})
    await engine.close()
    acc = [await accuracy(registry, settings, m) for m in [*gguf, "minilm-l6"]]
    return {"swap": swap, "accuracy": acc, "threads": settings.threads, "reps": reps}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    res = asyncio.run(main_async(args.reps))
    res["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
    lines = ["# Swap-in and estimate accuracy (one run)", "", f"{res['when']}, {args.reps} rotating reps, medians, "
             f"{res['threads']} threads. Rerun: `.venv/bin/python benchmarks/bench_swap.py`", "",
             "| model | fresh process to 1st token s | ours, free room s | ours, after evicting s "
             "| free / fresh | evict / fresh |", "|---|---|---|---|---|---|"]
    for s in res["swap"]:
        lines.append(f"| {s['model']} | {s['reference_s']:.3f} | {s['free_s']:.3f} | {s['evict_s']:.3f} | "
                     f"**{s['free_ratio']:.2f}** | **{s['evict_ratio']:.2f}** |")
    lines += ["", "| model | measured peak PSS MiB | estimate MiB (source) | estimate / peak | formula MiB "
              "| formula / peak |", "|---|---|---|---|---|---|"]
    for a in res["accuracy"]:
        lines.append(f"| {a['model']} | {a['peak_pss'] / MiB:,.0f} | {a['estimate'] / MiB:,.0f} ({a['source']}) | "
                     f"**{a['ratio']:.3f}** | {a['formula'] / MiB:,.0f} | {a['formula_ratio']:.3f} |")
    write_results("swap", res, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
