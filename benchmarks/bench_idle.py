"""What an idle daemon costs, and what waking it costs: the whole process tree's PSS 30 s after start, after each
burst of requests once every model has been unloaded (TTL) and the daemon has gone to sleep, and the first
request's latency from sleep beside the same request awake.

Two daemons one after the other: the default (it sleeps when idle: idle.py) and one that never sleeps
(SWARM_EDGE_SLEEP_S=never: the forkserver, its spare and the router's embedder stay), so what sleeping saves
and what waking costs are side by side.

A burst: one chat request to each local chat model by id, two routed requests (auto) and one embedding request,
over the daemon's Unix socket. The tree is the daemon and all its descendants (forkserver, spare, workers, the
router's embedder, the resource tracker); PSS from /proc/PID/smaps_rollup.

Rerun:  .venv/bin/python benchmarks/bench_idle.py [--bursts 3] [--idle-ttl 5]
Writes: benchmarks/results/idle.json and benchmarks/results/idle.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from results_io import wait_health, write_results

SWARM_EDGE = str(Path(sys.executable).with_name("swarm-edge"))
MiB = 2**20
CHATS = [("smollm2-135m", "Say hello in five words."), ("qwen2.5-coder-0.5b", "What is 17 + 25? Answer with a number."),
         ("auto", "Write a Python function that returns the square of a number."),
         ("auto", "Rewrite more politely: send me the file now.")]


def tree(pid: int) -> list[tuple[int, str, int]]:
    """(pid, what, PSS bytes) of a process and its descendants."""
    root = psutil.Process(pid)
    out = []
    for p in [root, *root.children(recursive=True)]:
        try:
            cmd = " ".join(p.cmdline())
            what = ("daemon" if p.pid == pid else "worker" if p.name() == "swarm-edge-wkr" else  # a spare or model
                    "resource tracker" if "resource_tracker" in cmd else "forkserver" if "forkserver" in cmd else
                    cmd[:40])
            out.append((p.pid, what, p.memory_full_info().pss))
        except psutil.Error:
            continue
    return out


def request(http: httpx.Client, model: str, prompt: str) -> float:
    t0 = time.perf_counter()
    r = http.post("/v1/chat/completions", json={"model": model, "max_tokens": 16, "temperature": 0,
                                                "messages": [{"role": "user", "content": prompt}]})
    r.raise_for_status()
    return time.perf_counter() - t0


def burst(http: httpx.Client) -> dict[str, float]:
    times = {f"{m}: {p[:30]}": request(http, m, p) for m, p in CHATS}
    t0 = time.perf_counter()
    http.post("/v1/embeddings", json={"model": "minilm-l6", "input": ["an embedding"]}).raise_for_status()
    times["minilm-l6: embedding"] = time.perf_counter() - t0
    return times


def wait_unloaded(http: httpx.Client, timeout: float, asleep: bool) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        st = http.get("/swarm/status").json()
        if not st["residents"] and (st["asleep"] or not asleep):
            return time.monotonic() - t0
        time.sleep(0.5)
    raise SystemExit(f"the daemon did not unload (and sleep) within {timeout:.0f} s")


def run(label: str, env: dict[str, str], args) -> list[tuple]:
    """One daemon: its tree 30 s after start, then bursts (cold from TTL unload, then warm), each followed by
    the tree once everything is unloaded (and, sleeping, asleep)."""
    d = Path(tempfile.mkdtemp(prefix="se-idle-"))
    os.chmod(d, 0o700)
    sock = d / "s.sock"
    proc = subprocess.Popen([SWARM_EDGE, "serve", "--socket", str(sock), "--offline", "--idle-ttl",
                             str(args.idle_ttl)], stdout=open(d / "daemon.log", "wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, **env})
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://swarm-edge", timeout=600)
    rows: list[tuple] = []
    try:
        wait_health(http, proc)
        time.sleep(args.settle)
        rows.append((label, "30 s after start", tree(proc.pid), None, None))
        for n in range(1, args.bursts + 1):
            cold = burst(http)         # every model loads again (TTL); asleep, the forkserver and router too
            warm = burst(http)         # the same requests, everything resident
            waited = wait_unloaded(http, args.idle_ttl + 120, asleep="SWARM_EDGE_SLEEP_S" not in env)
            time.sleep(args.settle)
            rows.append((label, f"after burst {n} (unloaded {waited:.0f} s after it, + {args.settle:.0f} s)",
                         tree(proc.pid), cold, warm))
    finally:
        http.close()
        proc.terminate()
        proc.wait(60)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bursts", type=int, default=3)
    ap.add_argument("--idle-ttl", type=float, default=5.0, help="the daemon's --idle-ttl (seconds)")
    ap.add_argument("--settle", type=float, default=30.0, help="seconds after start (and after unloading) to measure")
    args = ap.parse_args()
    rows = run("sleeps (default)", {}, args) + run("never sleeps", {"SWARM_EDGE_SLEEP_S": "never"}, args)
    lines = [f"# Idle daemon: whole tree PSS ({platform.machine()}, --idle-ttl {args.idle_ttl:g})", "",
             "| daemon | when | tree PSS (MiB) | processes (MiB) |", "|---|---|---:|---|"]
    for label, when, point, _, _ in rows:
        procs = ", ".join(f"{what} {pss / MiB:.1f}" for _, what, pss in point)
        lines.append(f"| {label} | {when} | **{sum(p for _, _, p in point) / MiB:.1f}** | {procs} |")
    bursts = [r for r in rows if r[3] is not None]
    lines += ["", "Each burst's requests, first after the TTL unload (cold: the model loads again; from sleep also "
              "the forkserver, spare and router embedder) and again at once (warm), seconds:", "",
              "| daemon | burst | " + " | ".join(bursts[0][3]) + " |", "|---" * (len(bursts[0][3]) + 2) + "|"]
    for label, when, _, cold, warm in bursts:
        lines.append(f"| {label} | {when.split(' (')[0]} | " + " | ".join(f"{cold[k]:.2f} / {warm[k]:.2f}"
                                                                          for k in cold) + " |")
    for label in dict.fromkeys(r[0] for r in bursts):
        cold = [sum(r[3].values()) for r in bursts if r[0] == label]
        lines.append(f"\n{label}: a cold burst takes {statistics.median(cold):.2f} s (median of {len(cold)})")
    lines += ["", f"Rerun: `.venv/bin/python benchmarks/bench_idle.py --bursts {args.bursts} --idle-ttl "
              f"{args.idle_ttl:g}`"]
    write_results("idle", {"machine": platform.machine(), "idle_ttl": args.idle_ttl,
                           "rows": [{"daemon": r[0], "when": r[1], "tree": r[2], "cold_s": r[3], "warm_s": r[4]}
                                    for r in rows]}, lines)


if __name__ == "__main__":
    main()
