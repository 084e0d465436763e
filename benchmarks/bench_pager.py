"""The pager under a tight budget: 200 requests over the default swarm, memory sampled every 25 ms.

One run does, on the same seeded trace (plans of 1-4 steps over the five default models):
  1. real engine, LRU eviction, no plan hints       -> peak PSS / budget, failures, swap-in time
  2. real engine, plan-aware eviction + prefetch    -> the same
  3. offline simulation on the trace with the measured per-model load times: LRU, plan-aware (knows only
     the current plan) and Belady (knows the whole future: evict the model whose next use is furthest)
  4. memory returns: machine's available memory before a load of the largest model, with it loaded, and
     after it was evicted
The budget is swarm-edge's own base PSS + the largest model's estimate + the median estimate, i.e. about
two models. The whole process tree (this process, forkserver, workers) is summed by a sampler thread.

Rerun:  .venv/bin/python benchmarks/bench_pager.py [--requests 200] [--seed 7]
Writes: benchmarks/results/pager.json and benchmarks/results/pager.md
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import threading
import time

import psutil
from results_io import write_results

from swarm_edge.boxmem import tree_pss
from swarm_edge.config import DEFAULT_CONFIG, Settings
from swarm_edge.engine import Engine
from swarm_edge.registry import load_registry
from swarm_edge.scheduler import lru, plan_aware
from swarm_edge.workers import GenerateRequest

POPULARITY = {"qwen2.5-coder-0.5b": 0.34, "smollm2-135m": 0.38, "minilm-l6": 0.18, "qwen2.5-coder-1.5b": 0.10}
MiB = 2**20


def make_trace(n: int, seed: int) -> list[list[str]]:
    """Plans (lists of model ids) adding up to n requests."""
    rnd = random.Random(seed)
    models, weights = zip(*POPULARITY.items(), strict=True)
    plans: list[list[str]] = []
    total = 0
    while total < n:
        steps = min(rnd.choice([1, 1, 2, 3, 4]), n - total)
        plans.append(list(rnd.choices(models, weights, k=steps)))
        total += steps
    return plans


class Sampler(threading.Thread):
    """Sums the PSS of the whole process tree every `period` seconds; keeps the peak."""

    def __init__(self, period: float = 0.025) -> None:
        super().__init__(daemon=True)
        self.period, self.peak, self.samples, self._stop_event = period, 0, 0, threading.Event()
        self.max_gap = 0.0

    def run(self) -> None:
        last = time.perf_counter()
        while not self._stop_event.is_set():
            self.peak = max(self.peak, tree_pss())
            self.samples += 1
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - last)
            last = now
            time.sleep(self.period)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


async def one_request(engine: Engine, model_id: str) -> None:
    if model_id == "minilm-l6":
        await engine.embed(model_id, ["what is the weather like tomorrow?"])
        return
    spec = engine.registry.get(model_id)
    if spec.kind == "chat":
        req = GenerateRequest(messages=[{"role": "user", "content": "Name one colour."}], max_tokens=6)
    else:
        req = GenerateRequest(prompt="The colour of the sky is", max_tokens=6)
    async for _ in engine.generate(model_id, req):
        pass


async def run_policy(registry, settings, budget: int, plans, policy_name: str) -> dict:
    policy = lru if policy_name == "lru" else plan_aware
    engine = Engine(registry, settings, budget=budget, policy=policy)
    await engine.start()
    sampler = Sampler()
    sampler.start()
    log, failures = [], []
    t0 = time.perf_counter()
    try:
        for plan in plans:
            if policy_name == "plan-aware":
                engine.scheduler.hint(plan)
            for model_id in plan:
                resident = model_id in engine.scheduler.residents and \
                    engine.scheduler.residents[model_id].state == "ready"
                t = time.perf_counter()
                try:
                    await one_request(engine, model_id)
                except Exception as exc:  # a failed request is a result here, not a crash of the benchmark
                    failures.append(f"{model_id}: {type(exc).__name__}: {exc}")
                log.append({"model": model_id, "hit": resident, "s": time.perf_counter() - t})
    finally:
        wall = time.perf_counter() - t0
        stats = vars(engine.scheduler.stats).copy()
        loads = {}
        await engine.close()
        sampler.stop()
    for entry in log:
        if not entry["hit"]:
            loads.setdefault(entry["model"], []).append(entry["s"])
    hit_times = {}
    for entry in log:
        if entry["hit"]:
            hit_times.setdefault(entry["model"], []).append(entry["s"])
    # swap-in time of a miss = its request time minus the typical time of a hit on the same model
    swap = sum(max(0.0, s - statistics.median(hit_times.get(m, [0.0]))) for m, ss in loads.items() for s in ss)
    return {"policy": policy_name, "requests": len(log), "failures": failures, "misses": sum(not e["hit"] for e in log),
            "swap_in_s": swap, "wall_s": wall, "peak_pss": sampler.peak, "budget": budget,
            "peak_over_budget": sampler.peak / budget, "samples": sampler.samples, "max_sample_gap_s": sampler.max_gap,
            "stats": stats, "miss_times": {m: statistics.median(v) for m, v in loads.items()},
            "hit_times": {m: statistics.median(v) for m, v in hit_times.items()}}


def simulate(plans, sizes: dict[str, int], cost: dict[str, float], budget: int, mode: str) -> tuple[float, int]:
    """Total swap-in cost and misses of a policy on the trace (no prefetch, uniform hit cost)."""
    flat = [(m, pi) for pi, plan in enumerate(plans) for m in plan]
    resident: dict[str, int] = {}   # model -> last use index
    total, misses = 0.0, 0
    for i, (m, pi) in enumerate(flat):
        if m in resident:
            resident[m] = i
            continue
        misses += 1
        total += cost[m]
        while resident and sum(sizes[x] for x in resident) + sizes[m] > budget:
            if mode == "lru":
                victim = min(resident, key=resident.get)
            else:
                horizon = flat[i + 1:] if mode == "belady" else [(x, p) for x, p in flat[i + 1:] if p == pi]
                future = [x for x, _ in horizon]

                def next_use(x, future=future):
                    return future.index(x) if x in future else len(flat) + 1

                unneeded = [x for x in resident if x not in future]
                if unneeded and mode == "plan-aware":
                    victim = min(unneeded, key=resident.get)
                else:
                    victim = max(resident, key=lambda x: (next_use(x), -resident[x]))
            del resident[victim]
        resident[m] = i
    return total, misses


async def memory_returns(registry, settings, model_id: str) -> dict:
    engine = Engine(registry, settings, budget="90%")
    await engine.start()
    await asyncio.sleep(0.5)
    before = psutil.virtual_memory().available
    await one_request(engine, model_id)
    loaded = psutil.virtual_memory().available
    await engine.close()  # evicts: the worker process exits
    await asyncio.sleep(0.5)
    after = psutil.virtual_memory().available
    return {"model": model_id, "available_before": before, "available_loaded": loaded, "available_after": after,
            "returned_within": abs(before - after) / before}


async def main_async(args) -> dict:
    settings = Settings.load()
    registry = load_registry(settings.config_path if settings.config_path.exists() else DEFAULT_CONFIG)
    ids = list(POPULARITY)
    warm = Engine(registry, settings, budget="90%")  # make sure every model is fetched and calibrated
    await warm.start()
    for m in ids:
        await one_request(warm, m)
    base = warm.base_pss()
    await warm.close()
    est = {m: warm.estimate(m) for m in ids}
    budget = base + max(est.values()) + int(statistics.median(est.values()))
    plans = make_trace(args.requests, args.seed)
    print(f"budget {budget / MiB:,.0f} MiB (base {base / MiB:,.0f} + largest {max(est.values()) / MiB:,.0f} + "
          f"median {statistics.median(est.values()) / MiB:,.0f}); {len(plans)} plans", file=sys.stderr)
    runs = []
    for name in ("lru", "plan-aware"):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        runs.append(await run_policy(registry, settings, budget, plans, name))
    cost = {}
    for m in ids:  # measured swap-in cost per model: median miss minus median hit, over both runs
        miss = [r["miss_times"][m] - r["hit_times"].get(m, 0.0) for r in runs if m in r["miss_times"]]
        cost[m] = statistics.median(miss) if miss else 1.0
    sizes = {m: est[m] for m in ids}
    sim = {mode: dict(zip(("swap_in_s", "misses"), simulate(plans, sizes, cost, budget - base, mode), strict=True))
           for mode in ("lru", "plan-aware", "belady")}
    mem = await memory_returns(registry, settings, "qwen2.5-coder-1.5b")
    return {"budget": budget, "base": base, "estimates": est, "cost_s": cost, "runs": runs, "simulated": sim,
            "memory_returns": mem, "trace": plans}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    res = asyncio.run(main_async(args))
    res["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
    sim = res["simulated"]
    lines = ["# Pager: 200 requests over the default swarm, budget of about two models (one run)", "",
             f"{res['when']}; budget {res['budget'] / MiB:,.0f} MiB; whole process tree PSS sampled every 25 ms.",
             "Rerun: `.venv/bin/python benchmarks/bench_pager.py`", "",
             "| policy | requests | failed | misses | peak PSS MiB | peak / budget | swap-in s | wall s | "
             "evictions | prefetches |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        lines.append(f"| {r['policy']} (real) | {r['requests']} | {len(r['failures'])} | {r['misses']} | "
                     f"{r['peak_pss'] / MiB:,.0f} | **{r['peak_over_budget']:.3f}** | {r['swap_in_s']:.1f} | "
                     f"{r['wall_s']:.0f} | {r['stats']['evictions']} | {r['stats']['prefetches']} |")
    lines += ["", "Offline simulation on the same trace with the measured swap-in cost per model "
              f"({', '.join(f'{m} {c:.2f} s' for m, c in res['cost_s'].items())}):", "",
              "| policy | misses | swap-in s | / Belady |", "|---|---|---|---|"]
    for mode in ("lru", "plan-aware", "belady"):
        lines.append(f"| {mode} | {sim[mode]['misses']} | {sim[mode]['swap_in_s']:.1f} | "
                     f"**{sim[mode]['swap_in_s'] / sim['belady']['swap_in_s']:.2f}** |")
    m = res["memory_returns"]
    lines += ["", f"Memory returns ({m['model']}): available {m['available_before'] / MiB:,.0f} MiB before, "
              f"{m['available_loaded'] / MiB:,.0f} MiB loaded, {m['available_after'] / MiB:,.0f} MiB after eviction "
              f"(difference **{m['returned_within'] * 100:.2f}%** of before)."]
    write_results("pager", res, lines)
    return 0 if all(not r["failures"] and r["peak_over_budget"] <= 1.0 for r in res["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
