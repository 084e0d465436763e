"""What dozing costs a load: with a model resident and nothing in flight for SWARM_EDGE_SLEEP_S the daemon stops
its forkserver, spare and resource tracker (idle.py), so the next load starts the forkserver again. Side by side in
one daemon: a swap to qwen2.5-coder-0.5b right after a request to smollm2-135m (awake: the spare is forked and
waiting) and the same swap once the daemon dozes; the tree's PSS in both states.

The budget holds one of the two models at a time (--budget), so every request to the other one is a swap (evict,
then load); checked from /swarm/status after each. Rounds alternate the two conditions; medians.

Rerun:  .venv/bin/python benchmarks/bench_doze.py [--rounds 5] [--budget 850MiB]
Writes: benchmarks/results/doze.json and benchmarks/results/doze.md
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
from results_io import wait_health, write_results

from swarm_edge.boxmem import tree_pss

SWARM_EDGE = str(Path(sys.executable).with_name("swarm-edge"))
MiB = 2**20
SMALL, BIG = "smollm2-135m", "qwen2.5-coder-0.5b"


def ask(http: httpx.Client, model: str) -> float:
    t0 = time.perf_counter()
    r = http.post("/v1/chat/completions", json={"model": model, "max_tokens": 8, "temperature": 0,
                                                "messages": [{"role": "user", "content": "Say hello."}]})
    if r.status_code != 200:
        raise SystemExit(f"{model}: {r.status_code} {r.text[:300]}")
    took = time.perf_counter() - t0
    residents = [x["model"] for x in http.get("/swarm/status").json()["residents"]]
    if residents != [model]:
        raise SystemExit(f"the budget holds {residents} after a request to {model}: not a swap; lower --budget")
    return took


def wait_dozing(http: httpx.Client, timeout: float = 120) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if http.get("/swarm/status").json().get("dozing"):
            return time.monotonic() - t0
        time.sleep(0.2)
    raise SystemExit("the daemon did not doze")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget", default="850MiB", help="holds one of the two models, not both")
    ap.add_argument("--sleep-s", type=float, default=3.0, help="the daemon's SWARM_EDGE_SLEEP_S")
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="se-doze-"))
    os.chmod(d, 0o700)
    sock = d / "s.sock"
    proc = subprocess.Popen([SWARM_EDGE, "serve", "--socket", str(sock), "--offline", "--threads", "2", "--budget",
                             args.budget, "--idle-ttl", "3600"], stdout=open(d / "daemon.log", "wb"),
                            stderr=subprocess.STDOUT, env={**os.environ, "SWARM_EDGE_SLEEP_S": str(args.sleep_s)})
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://swarm-edge", timeout=600)
    awake, dozing, pss_awake, pss_dozing = [], [], [], []
    try:
        wait_health(http, proc)
        ask(http, SMALL)
        ask(http, BIG)  # both loaded once (calibration, page cache) before anything is timed
        for n in range(args.rounds):
            for condition in (("awake", "dozing") if n % 2 == 0 else ("dozing", "awake")):
                ask(http, SMALL)
                if condition == "dozing":
                    wait_dozing(http)
                    pss_dozing.append(tree_pss(proc.pid))
                    dozing.append(ask(http, BIG))
                else:
                    time.sleep(0.5)  # the spare's refill after SMALL's load
                    pss_awake.append(tree_pss(proc.pid))
                    awake.append(ask(http, BIG))
                print(f"round {n + 1} {condition}: {(dozing if condition == 'dozing' else awake)[-1]:.3f} s",
                      file=sys.stderr)
    finally:
        http.close()
        proc.terminate()
        proc.wait(60)
    a, z = statistics.median(awake), statistics.median(dozing)
    lines = [f"# A swap while dozing vs awake ({platform.machine()}, {SMALL} resident -> {BIG}, 8 tokens, 2 threads, "
             f"budget {args.budget})", "",
             "| daemon | swap + 8 tokens (median, s) | each (s) | tree PSS before it (median, MiB) |",
             "|---|---:|---|---:|",
             f"| awake (spare forked) | {a:.3f} | {', '.join(f'{x:.2f}' for x in awake)} | "
             f"{statistics.median(pss_awake) / MiB:.1f} |",
             f"| dozing (forkserver, spare, tracker stopped) | {z:.3f} | {', '.join(f'{x:.2f}' for x in dozing)} | "
             f"{statistics.median(pss_dozing) / MiB:.1f} |", "",
             f"Dozing costs this swap **{z - a:+.3f} s** ({z / a:.2f}x) and saves "
             f"**{(statistics.median(pss_awake) - statistics.median(pss_dozing)) / MiB:.1f} MiB** while it lasts.", "",
             f"Rerun: `.venv/bin/python benchmarks/bench_doze.py --rounds {args.rounds} --budget {args.budget}`"]
    write_results("doze", {"machine": platform.machine(), "budget": args.budget, "awake_s": awake,
                           "dozing_s": dozing, "pss_awake": pss_awake, "pss_dozing": pss_dozing}, lines)


if __name__ == "__main__":
    main()
