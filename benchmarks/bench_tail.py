"""The end of an answer: from its last token to the end of the stream, and what a worker keeps after each request;
two revisions side by side in one run.

bench_daemon measures the start of an answer (TTFT) and its tokens; what happens after the last token is the
request's latency too, and the model's lease is held until it is done (the next request for the model waits).
Until 2026-12-01 the worker read /proc/self/smaps_rollup after every request (the kernel walks every page: 15 ms on
the 1.5B's worker), and llama-cpp-python's per-generation sampler, dropped in a reference cycle, left its
candidates buffer (n_vocab x 12 B) to the cyclic collector, so a worker's RSS grew with each request.

Each revision (a `git archive` copy, run with PYTHONPATH; the repository is not touched) serves the same short
prompt N times per model on a fresh daemon (direct path, 2 threads); the revisions alternate per model. Per request:
the client's time from the last token's event to the end of the stream; per daemon: the model worker's RSS growth
over the N requests (after two warm-up requests).

    .venv/bin/python benchmarks/bench_tail.py [--base REV] [--head REV] [--requests N] [--models M ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_daemon import _light_events  # noqa: E402
from bench_fixed_path import archive, daemon_of  # noqa: E402
from results_io import write_results  # noqa: E402

from swarm_edge.api.client import DaemonClient  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]


def serve(copy: Path, model: str, n: int) -> dict:
    """A fresh daemon from `copy`: two warm-up requests, then n; each one's tail (ms) and the worker's RSS growth."""
    with daemon_of(copy) as sock:
        for _ in range(2):
            request(sock, model)
        worker = psutil.Process(_worker_pid(sock, model))
        rss0 = worker.memory_info().rss
        tails = []
        for _ in range(n):
            tails.append(request(sock, model))
            time.sleep(0.05)
        return {"tails_ms": tails, "rss_growth_mib": (worker.memory_info().rss - rss0) / 2**20}


def _worker_pid(sock: Path, model: str) -> int:
    status = DaemonClient(sock, timeout=30).get("/swarm/status")
    return next(r["pid"] for r in status["residents"] if r["model"] == model)


def request(sock: Path, model: str) -> float:
    """One streamed request by bench_daemon's bare-socket client: ms from the last token's event to the stream's end."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 6,
                       "temperature": 0.0, "stream": True}).encode()
    last = None
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(120)
        s.connect(str(sock))
        for event in _light_events(s, body):
            if any(c.get("delta", {}).get("content") for c in event.get("choices", ())):
                last = time.perf_counter()
    if last is None:
        raise SystemExit(f"{model} answered no token")
    return (time.perf_counter() - last) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="d966a4b", help="the revision to compare with (default: before the change)")
    ap.add_argument("--head", default="HEAD")
    ap.add_argument("--requests", type=int, default=60, help="requests per daemon")
    ap.add_argument("--models", nargs="+", default=MODELS)
    args = ap.parse_args()
    for name in ("base", "head"):  # a commit, not a name that moves
        setattr(args, name, subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", getattr(args, name)],
                                           check=True, capture_output=True, text=True).stdout.strip())
    work = Path(tempfile.mkdtemp(prefix="bench-tail-"))
    got: dict[str, dict[str, dict]] = {}
    try:
        revs = {rev: archive(rev, work / f"rev{i}") for i, rev in enumerate((args.base, args.head))}
        for model in args.models:
            got[model] = {}
            for rev, copy in revs.items():
                print(f"{model} @ {rev}: {args.requests} requests", file=sys.stderr)
                got[model][rev] = serve(copy, model, args.requests)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"# The end of an answer: {args.base} vs {args.head}", "",
             f"{time.strftime('%Y-%m-%d %H:%M:%S')}, direct path, 2 threads, a fresh daemon per model and revision, "
             f"{args.requests} requests of 6 tokens after two warm-up ones. Tail: the client's time from the last "
             "token's event to the end of the stream (median, and the 90th percentile). RSS: the model worker's "
             "growth over those requests.",
             f"Rerun: `.venv/bin/python benchmarks/bench_tail.py --base {args.base} --head {args.head} "
             f"--requests {args.requests}`", "",
             f"| model | tail ms {args.base} | tail ms {args.head} | p90 {args.base} | p90 {args.head} | "
             f"worker RSS growth MiB {args.base} | {args.head} |", "|---|---:|---:|---:|---:|---:|---:|"]
    for model, by in got.items():
        b, h = by[args.base], by[args.head]
        p90 = {rev: statistics.quantiles(r["tails_ms"], n=10)[-1] for rev, r in by.items()}
        lines.append(f"| {model} | {statistics.median(b['tails_ms']):.2f} | **{statistics.median(h['tails_ms']):.2f}**"
                     f" | {p90[args.base]:.2f} | {p90[args.head]:.2f} | {b['rss_growth_mib']:+.1f} | "
                     f"**{h['rss_growth_mib']:+.1f}** |")
    write_results("tail", {"base": args.base, "head": args.head, "requests": args.requests, "results": got}, lines)


if __name__ == "__main__":
    main()
