"""Decode speed and time to first token: swarm-edge vs raw llama-cpp-python, one run, three paths.

raw     llama_cpp.Llama in this process
ours    swarm-edge's GGUF backend in this process
worker  the same backend in a worker process (forkserver), tokens streamed back as JSON frames

For every default GGUF model that is fetched, all paths load the same file with the same n_ctx, n_batch
and threads, and run the same greedy completion; runs rotate (raw, ours, worker, ...) so drift in machine
speed hits all alike. All count streamed chunks the same way. The KV cache is reset before every
in-process run. Every rep uses fresh instances (see bench_model). Each instance runs a short warm-up
first; the worker's backend keeps llama-cpp-python's prefix cache between requests (a feature: a repeated
system prompt is not evaluated again), so its TTFT here is a cached-prompt figure; its decode rate is
directly comparable.

Rerun:  .venv/bin/python benchmarks/bench_decode.py [--reps 4] [--max-tokens 96] [--models ID ...]
Writes: benchmarks/results/decode.json and benchmarks/results/decode.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

from results_io import fetched_models, write_results

from swarm_edge.config import DEFAULT_CONFIG, Settings
from swarm_edge.registry import load_registry
from swarm_edge.workers import GenerateRequest, open_backend

PROMPT = ("Below is a numbered list of one hundred common English words, one per line, "
          "in alphabetical order.\n1. able\n2. about\n3.")


def time_stream(chunks) -> tuple[float, float, int]:
    """(time to first chunk, decode chunks/s after the first, chunks) of a stream started just before."""
    t0 = time.perf_counter()
    first = last = None
    n = 0
    for text in chunks:
        if not text:
            continue
        last = time.perf_counter()
        first = first or last
        n += 1
    if first is None or n < 2:
        raise RuntimeError("the model produced fewer than two tokens; pick a longer-running prompt")
    return first - t0, (n - 1) / (last - first), n


def raw_run(llm, max_tokens: int):
    llm.reset()
    # the same sampling parameters the backend passes (top_p=1.0 is its default; llama-cpp-python's is 0.95)
    stream = llm.create_completion(prompt=PROMPT, max_tokens=max_tokens, temperature=0.0, top_p=1.0, stream=True)
    return time_stream(c["choices"][0]["text"] for c in stream)


def ours_run(backend, max_tokens: int):
    backend.llm.reset()
    events = backend.generate(GenerateRequest(prompt=PROMPT, max_tokens=max_tokens, temperature=0.0))
    return time_stream(e["text"] for e in events if e["type"] == "token")


def worker_run(loop, worker, max_tokens: int):
    async def stream():
        t0 = time.perf_counter()
        first = last = None
        n = 0
        req = GenerateRequest(prompt=PROMPT, max_tokens=max_tokens, temperature=0.0)
        async for e in worker.generate(req):
            if e["type"] == "token" and e["text"]:
                last = time.perf_counter()
                first = first or last
                n += 1
        return first - t0, (n - 1) / (last - first), n

    return loop.run_until_complete(stream())


def bench_model(spec, files, threads: int, reps: int, max_tokens: int) -> dict:
    """Each rep builds a fresh instance per path: one instance's memory layout can make it a few percent
    faster or slower than another of the same code (seen here: +-3% on qwen2.5-coder-0.5b), so only
    fresh instances per rep compare the code rather than the luck of one allocation."""
    import asyncio

    from llama_cpp import Llama

    from swarm_edge.workers import backend_options
    from swarm_edge.workers.pool import Pool

    loop = asyncio.new_event_loop()
    pool = Pool()

    def raw_once(n: int):
        raw = Llama(model_path=str(files["model"]), n_ctx=spec.n_ctx, n_batch=spec.n_batch, n_threads=threads,
                    n_threads_batch=threads, verbose=False)
        try:
            raw_run(raw, 8)  # warm-up, as for the others
            return raw_run(raw, n)
        finally:
            raw.close()

    def ours_once(n: int):
        ours = open_backend(spec, files, threads)
        try:
            ours_run(ours, 8)
            return ours_run(ours, n)
        finally:
            ours.close()

    def worker_once(n: int):
        worker = loop.run_until_complete(pool.spawn(spec.id, spec.format, str(files["model"]),
                                                    backend_options(spec, files, threads)))
        try:
            worker_run(loop, worker, 8)
            return worker_run(loop, worker, n)
        finally:
            loop.run_until_complete(worker.stop())

    runners = {"raw": raw_once, "ours": ours_once, "worker": worker_once}
    rows: dict[str, list] = {side: [] for side in runners}
    sides = list(runners)
    try:
        for i in range(reps):
            for side in sides[i % 3:] + sides[:i % 3]:
                rows[side].append(runners[side](max_tokens))
    finally:
        loop.run_until_complete(pool.close())
        loop.close()
    med = {side: {"ttft_s": statistics.median(r[0] for r in runs), "tok_s": statistics.median(r[1] for r in runs),
                  "tokens": runs[0][2]} for side, runs in rows.items()}
    return {
        "model": spec.id, "n_ctx": spec.n_ctx, "n_batch": spec.n_batch, "threads": threads, "reps": reps,
        "raw": med["raw"], "ours": med["ours"], "worker": med["worker"],
        "decode_ratio": med["ours"]["tok_s"] / med["raw"]["tok_s"],
        "worker_decode_ratio": med["worker"]["tok_s"] / med["raw"]["tok_s"],
        "worker_ttft_added_ms": (med["worker"]["ttft_s"] - med["raw"]["ttft_s"]) * 1000,
        "ttft_ratio": med["raw"]["ttft_s"] / med["ours"]["ttft_s"],
        "ttft_added_ms": (med["ours"]["ttft_s"] - med["raw"]["ttft_s"]) * 1000,
        "runs": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", help="model ids (default: every GGUF model that is fetched)")
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    settings = Settings.load(threads=args.threads)
    registry = load_registry(settings.config_path if settings.config_path.exists() else DEFAULT_CONFIG)
    ids = args.models or [m.id for m in registry if m.format == "gguf"]
    results = []
    for spec, files in fetched_models(settings, registry, ids):
        print(f"benchmarking {spec.id} ...", file=sys.stderr, flush=True)
        results.append(bench_model(spec, files, settings.threads, args.reps, args.max_tokens))
    if not results:
        print("no GGUF model is fetched: run `swarm-edge models fetch` first", file=sys.stderr)
        return 1
    meta = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine(),
            "python": platform.python_version(), "prompt": PROMPT, "max_tokens": args.max_tokens}
    lines = [
        "# Decode: swarm-edge (in-process backend, worker process) vs raw llama-cpp-python, one run",
        "", f"{meta['when']}, {args.reps} rotating reps per path, medians, {args.max_tokens} tokens max, "
        "same file/threads/n_ctx/n_batch/prompt/sampling.",
        "Rerun: `.venv/bin/python benchmarks/bench_decode.py`", "",
        "| model | threads | raw tok/s | backend tok/s | worker tok/s | backend/raw | worker/raw "
        "| raw TTFT ms | backend TTFT ms | worker TTFT ms (prompt cached) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['model']} | {r['threads']} | {r['raw']['tok_s']:.1f} | {r['ours']['tok_s']:.1f} | "
                     f"{r['worker']['tok_s']:.1f} | **{r['decode_ratio']:.3f}** | **{r['worker_decode_ratio']:.3f}** | "
                     f"{r['raw']['ttft_s'] * 1000:.0f} | {r['ours']['ttft_s'] * 1000:.0f} | "
                     f"{r['worker']['ttft_s'] * 1000:.0f} |")
    write_results("decode", {"meta": meta, "results": results}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
