"""Board profiles: the task suite through a real daemon inside a memory cgroup of 4, 2 and 1 GiB (a Pi-class box,
simulated with the kernel's memory controller: cgroups.py), with the default budget (60% of the box, read from the
cgroup: boxmem.py). What a board must show: 0 OOM kills, 0 hangs, and where the heavy tier cannot fit, the routes
fall back to models that fit and say so in the trace, with no error.

Per profile: accuracy (checks.py), mean latency, the daemon tree's peak PSS (sampled every 0.25 s) beside the
cgroup's own peak (page cache included), loads and evictions (swaps), OOM kills (the cgroup's counter), hangs (a
request that takes longer than --hang-s), errors, answers per model, and routes that fell back.

Rerun:  .venv/bin/python benchmarks/bench_boards.py --split test [--profiles 4GiB 2GiB 1GiB] [--limit N]   (root)
Writes: benchmarks/results/boards-SPLIT.json and .md
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cgroups
import evalsets
import httpx
import psutil
from bench_tasks import load_suite
from results_io import wait_health, write_results

from swarm_edge import boxmem
from swarm_edge.checks import check
from swarm_edge.config import parse_size

SWARM_EDGE = str(Path(sys.executable).with_name("swarm-edge"))
MiB = 2**20


def tree_pss(pid: int) -> int:
    """The daemon tree's PSS (0 once it has exited)."""
    try:
        return boxmem.tree_pss(pid)
    except psutil.Error:
        return 0


def run_profile(profile: str, items: list[dict], hang_s: float) -> dict:
    """The whole suite through one daemon started inside a fresh cgroup of this size."""
    limit = parse_size(profile)
    work = Path(tempfile.mkdtemp(prefix="se-board-"))
    os.chmod(work, 0o700)
    sock = work / "s.sock"
    with cgroups.Cgroup(f"se-board-{profile}", limit) as cg:
        proc = subprocess.Popen([SWARM_EDGE, "serve", "--socket", str(sock), "--offline", "--idle-ttl", "300"],
                                preexec_fn=cg.enter, stdout=open(work / "daemon.log", "wb"), stderr=subprocess.STDOUT)
        peak, done = 0, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, tree_pss(proc.pid))
                done.wait(0.25)

        threading.Thread(target=sample, daemon=True).start()
        http = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://swarm-edge",
                            timeout=hang_s)
        records = []
        try:
            wait_health(http, proc)
            status = http.get("/swarm/status").json()
            for item in items:
                records.append(ask(http, item, proc))
                print(f"  {profile:<6} {item['id']:<13} {records[-1]['verdict']:<5} {records[-1]['latency_s']:6.2f}s "
                      f"{records[-1]['model'] or records[-1]['error'][:60]}", file=sys.stderr, flush=True)
            final = http.get("/swarm/status").json() if proc.poll() is None else {}
        finally:
            done.set()
            http.close()
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        return summarize(profile, limit, records, status, final, peak, cg)


def ask(http: httpx.Client, item: dict, proc: subprocess.Popen) -> dict:
    t0 = time.perf_counter()
    rec = {"id": item["id"], "task": item["task"], "ok": False, "model": None, "fallback": None, "error": ""}
    try:
        r = http.post("/v1/chat/completions", json={"model": "auto", "temperature": 0, "messages": [
            {"role": "user", "content": item["prompt"]}]})
        if r.status_code == 200:
            body = r.json()
            text = body["choices"][0]["message"]["content"] or ""
            rec["ok"], rec["note"] = check(item, text)
            rec["model"] = body["swarm"]["model"]
            reason = body["swarm"]["route"]["reason"]
            swap = re.search(r"(\S+) needs about .*: (\S+) instead", reason)
            rec["fallback"] = f"{swap.group(1)} -> {swap.group(2)}" if swap else None
        else:
            rec["error"] = f"HTTP {r.status_code}: {r.text[:200]}"
    except httpx.TimeoutException:
        rec["error"] = "hang: no answer in time"
    except httpx.HTTPError as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}" + ("" if proc.poll() is None else " (the daemon died)")
    rec["latency_s"] = round(time.perf_counter() - t0, 3)
    rec["verdict"] = "ok" if rec["ok"] else "ERR" if rec["error"] else "wrong"
    return rec


def summarize(profile: str, limit: int, records: list[dict], status: dict, final: dict, peak: int, cg) -> dict:
    n = len(records)
    stats = final.get("stats", {})
    return {"profile": profile, "limit": limit, "budget": status.get("budget"), "budget_source":
            status.get("budget_source"), "items": n, "correct": sum(r["ok"] for r in records),
            "accuracy": round(sum(r["ok"] for r in records) / max(1, n), 4),
            "mean_latency_s": round(statistics.fmean(r["latency_s"] for r in records), 3) if records else None,
            "peak_tree_pss": peak, "peak_cgroup": cg.peak(), "oom_kills": cg.oom_kills(),
            "hangs": sum(r["error"].startswith("hang") for r in records),
            "errors": sum(bool(r["error"]) for r in records), "loads": stats.get("loads"),
            "evictions": stats.get("evictions"), "crashes": stats.get("crashes"),
            "models": dict(collections.Counter(r["model"] for r in records if r["model"])),
            "fallbacks": dict(collections.Counter(r["fallback"] for r in records if r["fallback"])),
            "records": records}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=["dev", "test"], required=True)
    ap.add_argument("--profiles", nargs="+", default=["4GiB", "2GiB", "1GiB"])
    ap.add_argument("--limit", type=int, default=None, help="only the first N items")
    ap.add_argument("--hang-s", type=float, default=600.0, help="a request slower than this is a hang")
    args = ap.parse_args()
    if why := cgroups.available():
        raise SystemExit(f"board profiles need a memory cgroup: {why}")
    items = load_suite(args.limit, args.split)
    announce = evalsets.announce(args.split)
    print(announce, file=sys.stderr)
    results = [run_profile(p, items, args.hang_s) for p in args.profiles]
    lines = [f"# Board profiles: the task suite through the daemon in a memory cgroup ({platform.machine()}, "
             f"{os.cpu_count()} cores, default budget)", "", f"{announce}.", "",
             "| profile | budget | accuracy | mean latency s | peak tree PSS MiB | cgroup peak MiB | loads / "
             "evictions | OOM kills | hangs | errors |", "|---" * 10 + "|"]
    for r in results:
        lines.append(f"| {r['profile']} | {(r['budget'] or 0) / MiB:,.0f} MiB | {r['correct']}/{r['items']} = "
                     f"{r['accuracy']:.3f} | {r['mean_latency_s']:.2f} | {r['peak_tree_pss'] / MiB:,.0f} | "
                     f"{r['peak_cgroup'] / MiB:,.0f} | {r['loads']} / {r['evictions']} | {r['oom_kills']} | "
                     f"{r['hangs']} | {r['errors']} |")
    for r in results:
        lines += ["", f"**{r['profile']}** (budget from: {r['budget_source']}): answers by "
                  + ", ".join(f"{m} {c}" for m, c in r["models"].items())
                  + (". Fallbacks: " + "; ".join(f"{c}x {f}" for f, c in r["fallbacks"].items())
                     if r["fallbacks"] else ". No fallback.")]
    lines += ["", f"Rerun (as root): `.venv/bin/python benchmarks/bench_boards.py --split {args.split}`"]
    write_results(f"boards-{args.split}", {"split": announce, "results": results}, lines)


if __name__ == "__main__":
    main()
