"""Fuzz campaign for the daemon's HTTP API: schemathesis against its own OpenAPI document, >= --n requests.

One real `swarm-edge serve` (the test models: smollm2-135m, its twin smollm2-135m-b, minilm-l6; --offline) with a
TCP listener. Rounds over every operation of /openapi.json, positive and negative bodies (a new Hypothesis seed per
round), until --n requests have been sent; every --tcp-every-th round goes over the TCP listener with the token,
the others over the Unix socket. The cases, the token cap (CAP tokens per generation), the real-model swaps and
the lone-surrogate injection are those of tests/api/test_fuzz_api.py (`Campaign`), and so are the checks: no 5xx,
documented status, content type, body (every SSE event, every NDJSON line) valid against the document.

Counted: requests and statuses per operation; daemon crashes (the process gone: restarted, the campaign goes on);
hangs (no answer within --time-bound seconds); answers with a status the document does not list; schema
violations; other failed checks; afterwards, leases, queue entries or streams still held, and 500s in the log.

Rerun:  nice -n 5 .venv/bin/python benchmarks/fuzz_api.py [--n 5000] [--seed 1] [--time-bound 60] [--tcp-every 4]
Writes: benchmarks/results/fuzz_api.json and benchmarks/results/fuzz_api.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from results_io import write_results

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the campaign and the daemon harness live with the tests

from schemathesis import GenerationMode  # noqa: E402

from tests.api import test_fuzz_api as fuzz  # noqa: E402
from tests.api.conftest import Daemon, private_root  # noqa: E402

EXAMPLES = 25  # per operation, mode and round


def test_config(root: Path) -> Path:
    """models.yaml of the API tests, over the test models already fetched into .cache/test-home."""
    from swarm_edge.config import DEFAULT_CONFIG, Settings
    from swarm_edge.registry import load_registry
    from swarm_edge.sources import ensure_model
    from tests.conftest import TEST_MODELS, registry_yaml

    home = Path(os.environ.get("SWARM_EDGE_TEST_HOME", REPO / ".cache" / "test-home"))
    settings = Settings.load(home=home, config=DEFAULT_CONFIG, threads=2)
    registry = load_registry(DEFAULT_CONFIG)
    files = {m: ensure_model(settings, registry.get(m), registry.base_dir, fetch=False) for m in TEST_MODELS}
    path = root / "models.yaml"
    path.write_text(registry_yaml(files, twin=True))
    return path


class Target:
    """The daemon under fuzz, restarted if it dies; a Campaign per transport, tallies merged at the end."""

    def __init__(self, config: Path, port: int, time_bound: float) -> None:
        import httpx2

        self.config, self.port, self.time_bound = config, port, time_bound
        self.daemon: Daemon | None = None
        self.crashes: list[str] = []
        self.logs: list[str] = []
        self.tcp = httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=time_bound)
        self.start()

    def start(self) -> None:
        self.daemon = Daemon(private_root(), self.config, "--tcp", f"127.0.0.1:{self.port}").start()
        d = self.daemon
        self.auth = {"Authorization": "Bearer " + (d.socket.parent / "token").read_text().strip()}
        self.unix = fuzz.Campaign(d.http, alive=lambda: d.proc.poll() is None, timeout=self.time_bound)
        self.over_tcp = fuzz.Campaign(self.tcp, alive=lambda: d.proc.poll() is None, headers=self.auth,
                                      timeout=self.time_bound)
        self.campaigns = getattr(self, "campaigns", []) + [self.unix, self.over_tcp]

    def restart_if_dead(self) -> None:
        camp = next((c for c in (self.unix, self.over_tcp) if c.crashed), None)
        if camp is None and self.daemon.proc.poll() is None:
            return
        self.crashes.append(camp.crashed if camp else f"the daemon exited with {self.daemon.proc.returncode}")
        self.stop()
        self.start()

    def stop(self) -> None:
        d = self.daemon
        d.stop()
        self.logs.append(d.output())
        shutil.rmtree(d.root, ignore_errors=True)


def run(n: int, seed: int, time_bound: float, tcp_every: int) -> dict:
    """The campaign: rounds over every operation until `n` requests were sent; the tallies."""
    root = private_root()
    target = Target(test_config(root), fuzz.free_port(), time_bound)
    t0 = time.monotonic()
    rounds = 0
    try:
        while sum(c.total() for c in target.campaigns) < n:
            tcp = bool(tcp_every) and rounds % tcp_every == tcp_every - 1
            for op in target.unix.operations:
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    camp = target.over_tcp if tcp else target.unix  # new ones after a restart
                    camp.run(op, mode, EXAMPLES, seed=seed * 100_003 + rounds)
                    target.restart_if_dead()
            rounds += 1
            print(f"round {rounds}: {sum(c.total() for c in target.campaigns):,} requests, "
                  f"{time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
        d = target.daemon
        leftover = fuzz.no_lease_left(d.http)
        health = d.http.get("/health").json()["status"]
    finally:
        target.stop()
        shutil.rmtree(root, ignore_errors=True)
    return tally(target, rounds, time.monotonic() - t0, leftover, health)


def _kind(title: str) -> str:
    if title == "Undocumented status code":
        return "undocumented_status"
    if "schema" in title.lower():
        return "schema_violation"
    if title == "Server error":
        return "server_error"
    return "other_failure"


def tally(target: Target, rounds: int, elapsed: float, leftover: dict, health: str) -> dict:
    """Merge the campaigns' counts into the report."""
    requests: Counter[str] = Counter()
    statuses: dict[str, Counter[int]] = {}
    failures, hangs, transports = [], [], Counter()
    for camp in target.campaigns:
        requests.update(camp.requests)
        for op, seen in camp.statuses.items():
            statuses.setdefault(op, Counter()).update(seen)
        failures += camp.failures
        hangs += camp.hangs
        transports["tcp" if camp.headers else "unix"] += camp.total()
    kinds = Counter(_kind(f["kind"]) for f in failures)
    slowest = max(c.slowest for c in target.campaigns)
    log = "".join(target.logs)
    return {"requests": sum(requests.values()), "rounds": rounds, "elapsed_s": round(elapsed, 1),
            "by_transport": dict(transports), "per_operation": dict(requests.most_common()),
            "statuses": {op: dict(sorted(s.items())) for op, s in sorted(statuses.items())},
            "crashes": target.crashes, "hangs": hangs, "slowest_s": round(slowest, 2),
            "undocumented_status": kinds["undocumented_status"], "schema_violations": kinds["schema_violation"],
            "server_errors": kinds["server_error"], "other_failures": kinds["other_failure"],
            "failures": failures[:50], "health_after": health,
            "held_after": {"waiting": leftover["waiting"], "streams_open": leftover["streams_open"],
                           "in_use": sum(r["in_use"] for r in leftover["residents"])},
            "internal_errors_logged": log.count("internal error answering"),
            "tracebacks_logged": log.count("Traceback")}


def table(report: dict) -> list[str]:
    """The Markdown report."""
    r = report
    lines = ["# HTTP API: schemathesis fuzz campaign", "",
             f"`{r['command']}` ({r['requests']:,} requests in {r['rounds']} rounds, {r['elapsed_s']} s; "
             f"{r['by_transport'].get('unix', 0):,} over the Unix socket, {r['by_transport'].get('tcp', 0):,} over "
             f"TCP with the token; {r['machine']})", "",
             "| requests | daemon crashes | hangs | undocumented statuses | schema violations | 5xx | other failed "
             "checks | slowest answer |", "|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| {r['requests']:,} | {len(r['crashes'])} | {len(r['hangs'])} | {r['undocumented_status']} | "
             f"{r['schema_violations']} | {r['server_errors']} | {r['other_failures']} | {r['slowest_s']} s |", "",
             f"After the run: /health {r['health_after']!r}; held: {r['held_after']}; 500s in the daemon's log: "
             f"{r['internal_errors_logged']}, tracebacks: {r['tracebacks_logged']}.", "",
             "| operation | requests | statuses |", "|---|---:|---|"]
    for op, n in r["per_operation"].items():
        seen = ", ".join(f"{s}: {k:,}" for s, k in r["statuses"].get(op, {}).items())
        lines.append(f"| `{op}` | {n:,} | {seen} |")
    if r["crashes"] or r["hangs"] or r["failures"]:
        lines += ["", "Findings (first ones):", ""]
        lines += [f"- crash: {c[:300]}" for c in r["crashes"]]
        lines += [f"- hang: {h['operation']}: `{h['request'][:300]}`" for h in r["hangs"][:10]]
        lines += [f"- {f['kind']} ({f['operation']}, {f.get('status')}): {f['message'][:200]!r}; "
                  f"`{f['request'][:300]}`" for f in r["failures"][:20]]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="generated requests, at least")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--time-bound", type=float, default=fuzz.HANG_S, help="seconds before an answer is a hang")
    ap.add_argument("--tcp-every", type=int, default=4, help="every Nth round over TCP (0: never)")
    args = ap.parse_args(argv)
    report = run(args.n, args.seed, args.time_bound, args.tcp_every)
    report = {"command": "benchmarks/fuzz_api.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "seed": args.seed, "time_bound_s": args.time_bound, "cap_tokens": fuzz.CAP,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", **report}
    write_results("fuzz_api", report, table(report))
    bad = report["crashes"] or report["hangs"] or report["undocumented_status"] or report["schema_violations"] \
        or report["server_errors"] or report["other_failures"] or any(report["held_after"].values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
