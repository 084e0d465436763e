"""Soak: minutes of mixed load through one real daemon while clients hang up and workers are killed; afterwards
nothing may be left over.

One `swarm-edge serve` (--offline) over the test models in .cache/test-home (smollm2-135m, its twin smollm2-135m-b,
minilm-l6) with the tests' swarm routes, so `auto` is routed by the semantic router (chat; rewrite: a cascade;
classify: an ensemble; math: the calculator). --concurrency clients send requests for --minutes: chat streamed and
not, completions, embeddings, `auto` chats and Ollama NDJSON chats. 30% of the streams hang up after a few tokens;
5% of the requests are followed, 0-1.5 s after they are sent, by a SIGKILL of a random resident worker (whatever
ran on it fails with worker_crashed; the next request reloads the model). Every --sample-every seconds: the PSS
of the daemon's process tree (swarm_edge.engine.tree_pss) and the daemon's open file descriptors.

Baseline: after a warm-up (each model loaded and used once) and an idle settle. End: after the load, each model
used once more (so the same models are resident as at the baseline, a killed one reloaded) and an idle settle.
Checks: no leaked lease (status: every in_use, waiting and streams_open 0), no request hung, no worker process
beyond the residents and the spare, tree PSS and open fds within +-5% of the baseline, the daemon alive.

Rerun:  nice -n 5 .venv/bin/python benchmarks/bench_soak.py [--minutes 30] [--concurrency 4] [--seed 1]
Writes: benchmarks/results/soak.json and benchmarks/results/soak.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from results_io import write_results

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the daemon harness and the test models' config live with the tests

import httpx2  # noqa: E402
import psutil  # noqa: E402

from swarm_edge.engine import tree_pss  # noqa: E402
from tests.api.conftest import Daemon, private_root  # noqa: E402

KINDS = {"chat-stream": 25, "chat": 15, "completion": 10, "embed": 20, "auto": 20, "ollama-stream": 10}
HANGUP_SHARE, KILL_SHARE, TOLERANCE = 0.30, 0.05, 0.05
CHAT_MODELS = ["smollm2-135m", "smollm2-135m-b"]
PROMPTS = ["Say something about the sea.", "Name three fruits.", "What is a cat?", "Tell me about Tuesdays.",
           "Write one line about rain."]
AUTO_PROMPTS = ["hello, how are you today?", "Rewrite this more politely: give me the file.",
                "Classify the sentiment as positive or negative: great film.", "What is 12 times 7?",
                "Tell me something fun."]
HANG_S = 180.0   # a request that takes longer than this is counted as hung (and abandoned)


def test_config(root: Path) -> Path:
    """models.yaml of the API tests with the swarm routes, over the test models already in .cache/test-home."""
    from swarm_edge.config import DEFAULT_CONFIG, Settings
    from swarm_edge.registry import load_registry
    from swarm_edge.sources import ensure_model
    from tests.conftest import TEST_MODELS, registry_yaml

    home = Path(os.environ.get("SWARM_EDGE_TEST_HOME", REPO / ".cache" / "test-home"))
    settings = Settings.load(home=home, config=DEFAULT_CONFIG, threads=2)
    registry = load_registry(DEFAULT_CONFIG)
    files = {m: ensure_model(settings, registry.get(m), registry.base_dir, fetch=False) for m in TEST_MODELS}
    path = root / "models.yaml"
    path.write_text(registry_yaml(files, swarm=True))
    return path


# ---------------------------------------------------------------- one request


def _request(kind: str, rng: random.Random) -> tuple[str, dict, bool]:
    """(path, body, streamed) of one request of `kind`."""
    prompt = rng.choice(PROMPTS)
    tokens = rng.randint(4, 40)
    if kind == "embed":
        return "/v1/embeddings", {"model": "minilm-l6", "input": [prompt, rng.choice(PROMPTS)]}, False
    if kind == "completion":
        stream = rng.random() < 0.5
        return "/v1/completions", {"model": rng.choice(CHAT_MODELS), "prompt": prompt, "max_tokens": tokens,
                                   "stream": stream}, stream
    if kind == "ollama-stream":
        return "/api/chat", {"model": rng.choice(CHAT_MODELS), "options": {"num_predict": tokens},
                             "messages": [{"role": "user", "content": prompt}]}, True
    model, stream = rng.choice(CHAT_MODELS), kind == "chat-stream"
    if kind == "auto":
        model, prompt, stream = "auto", rng.choice(AUTO_PROMPTS), rng.random() < 0.5
    return "/v1/chat/completions", {"model": model, "max_tokens": tokens, "stream": stream,
                                    "messages": [{"role": "user", "content": prompt}]}, stream


def _error_of(status: int, text: str, headers) -> str:
    if status == 503 and headers.get("retry-after"):
        return "503"
    try:
        err = json.loads(text)["error"]
        code = err.get("code") if isinstance(err, dict) else err
    except (ValueError, KeyError, TypeError):
        code = text[:40]
    return f"error:{status}:{code}"


def _ollama_code(message: str) -> str:
    """An Ollama error (a bare message) named like the OpenAI code it stands for, where that is clear."""
    if message.startswith("worker for "):
        return "worker_crashed"
    return re.sub(r"\d+", "N", message)[:50]


async def _one(http: httpx2.AsyncClient, kind: str, rng: random.Random) -> str:
    path, body, streamed = _request(kind, rng)
    if not streamed:
        r = await http.post(path, json=body)
        return "ok" if r.status_code == 200 else _error_of(r.status_code, r.text, r.headers)
    hang_up = rng.random() < HANGUP_SHARE
    after = rng.randint(1, 6)
    ollama = path.startswith("/api/")
    async with http.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return _error_of(r.status_code, r.text, r.headers)
        seen, last = 0, ""
        async for line in r.aiter_lines():
            if not line.strip():
                continue
            last = line
            if '"error"' in line:  # a stream that started and then failed ends with one error event
                err = json.loads(line[6:] if line.startswith("data: ") else line)["error"]
                return f"error:stream:{err.get('code') if isinstance(err, dict) else _ollama_code(err)}"
            seen += 1
            if hang_up and seen >= after:
                return "hung-up"  # leaving the block closes the connection mid-stream
    done = '"done":true' in last if ollama else last == "data: [DONE]"
    return "ok" if done else "error:stream:truncated"


# ---------------------------------------------------------------- the soak


class Soak:
    """The daemon under load, its samples and its tallies."""

    def __init__(self, d: Daemon, seed: int, concurrency: int) -> None:
        self.d, self.rng, self.concurrency = d, random.Random(seed), concurrency
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.latency: dict[str, list[float]] = {}
        self.kills: list[dict] = []
        self.samples: list[dict] = []
        self._tasks: set[asyncio.Task] = set()

    def sample(self) -> dict:
        """PSS of the daemon's tree and its open fds, now."""
        pid = self.d.proc.pid
        return {"t": time.time(), "pss": tree_pss(pid), "fds": psutil.Process(pid).num_fds()}

    def sampler(self, every: float, stop: threading.Event) -> None:
        while not stop.wait(every):
            try:
                self.samples.append(self.sample())
            except psutil.Error:
                return  # the daemon is gone: the checks will say so

    def kill_a_worker(self) -> None:
        """SIGKILL one resident worker of this daemon, chosen at random (only a grandchild of the daemon)."""
        residents = [r for r in self.d.status()["residents"] if r.get("pid")]
        if not residents:
            return
        r = self.rng.choice(residents)
        try:
            proc = psutil.Process(r["pid"])
            if proc.parent().parent().pid != self.d.proc.pid:  # a reused pid is never ours to kill
                return
            proc.send_signal(signal.SIGKILL)
        except (psutil.Error, AttributeError):
            return
        self.kills.append({"t": time.time(), "model": r["model"], "pid": r["pid"]})

    async def kill_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await asyncio.to_thread(self.kill_a_worker)

    async def client(self, http: httpx2.AsyncClient, until: float) -> None:
        kinds, weights = list(KINDS), list(KINDS.values())
        while time.monotonic() < until:
            kind = self.rng.choices(kinds, weights)[0]
            if self.rng.random() < KILL_SHARE:
                task = asyncio.get_running_loop().create_task(self.kill_later(self.rng.uniform(0, 1.5)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            t0 = time.monotonic()
            try:
                outcome = await asyncio.wait_for(_one(http, kind, self.rng), HANG_S)
            except asyncio.TimeoutError:
                outcome = "hang"
            except httpx2.HTTPError as exc:
                outcome = f"exception:{type(exc).__name__}"
            self.outcomes[(kind, outcome)] += 1
            if outcome == "ok":
                self.latency.setdefault(kind, []).append(time.monotonic() - t0)

    async def run(self, seconds: float) -> None:
        transport = httpx2.AsyncHTTPTransport(uds=str(self.d.socket))
        async with httpx2.AsyncClient(transport=transport, base_url="http://swarm-edge", timeout=HANG_S) as http:
            until = time.monotonic() + seconds
            await asyncio.gather(*(self.client(http, until) for _ in range(self.concurrency)))
            await asyncio.gather(*self._tasks)  # kills scheduled by the last requests


def warm(d: Daemon) -> None:
    """Use every model once (retrying past a 503 or a worker killed a moment ago), so each is resident."""
    for model in [*CHAT_MODELS, "minilm-l6", "auto"]:
        for _ in range(5):
            if model == "minilm-l6":
                r = d.http.post("/v1/embeddings", json={"model": model, "input": ["warm up"]})
            else:
                r = d.http.post("/v1/chat/completions", json={"model": model, "max_tokens": 2,
                                                              "messages": [{"role": "user", "content": "hi"}]})
            if r.status_code == 200:
                break
            time.sleep(1)
        else:
            raise RuntimeError(f"{model} did not answer: {r.status_code} {r.text[:300]}")


def settle(d: Daemon, within: float = 60.0) -> dict:
    """Status once no lease, waiter or stream is left, or after `within` seconds (the check then fails)."""
    end = time.monotonic() + within
    while True:
        st = d.status()
        if (st["waiting"] == 0 and st["streams_open"] == 0 and all(r["in_use"] == 0 for r in st["residents"])) \
                or time.monotonic() > end:
            return st
        time.sleep(0.2)


def idle_level(soak: Soak, seconds: float = 10.0, n: int = 5) -> dict:
    """Median PSS and fds of `n` samples taken after `seconds` of idling."""
    time.sleep(seconds)
    got = []
    for _ in range(n):
        got.append(soak.sample())
        time.sleep(1)
    return {"pss": statistics.median(s["pss"] for s in got), "fds": statistics.median(s["fds"] for s in got)}


def workers(pid: int) -> list[int]:
    """Worker processes: the forkserver's children (the spare and every resident model)."""
    out = []
    for child in psutil.Process(pid).children():
        if "forkserver" in " ".join(child.cmdline()):
            out.extend(p.pid for p in child.children())
    return out


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def checks(st: dict, base: dict, end: dict, hangs: int, extra_workers: list[int], alive: bool) -> dict[str, bool]:
    """Each end-of-soak check: True if it holds."""
    return {
        "no leaked lease (in_use, waiting, streams_open all 0)": st["waiting"] == 0 and st["streams_open"] == 0
        and all(r["in_use"] == 0 for r in st["residents"]),
        "no request hung": hangs == 0,
        "no worker beyond the residents and the spare": not extra_workers,
        f"tree PSS within +-{TOLERANCE:.0%} of the baseline": abs(end["pss"] / base["pss"] - 1) <= TOLERANCE,
        f"open fds within +-{TOLERANCE:.0%} of the baseline": abs(end["fds"] / base["fds"] - 1) <= TOLERANCE,
        "daemon alive": alive,
    }


def report(meta: dict, soak: Soak, base: dict, end: dict, st: dict, ok: dict[str, bool]) -> list[str]:
    """The Markdown lines of soak.md."""
    mib = 2 ** 20
    by_outcome = Counter()
    for (_, outcome), n in soak.outcomes.items():
        by_outcome[outcome.split(":")[0] if not outcome.startswith("error") else "error"] += n
    errors = Counter()
    for (kind, outcome), n in soak.outcomes.items():
        if outcome.startswith(("error", "exception")):
            errors[f"{outcome} ({kind})"] += n
    total = sum(soak.outcomes.values())
    pss = [s["pss"] for s in soak.samples] or [0]
    fds = [s["fds"] for s in soak.samples] or [0]
    lines = [
        "# Soak: mixed load through the daemon, clients hanging up, workers killed", "",
        f"{meta['when']}, {meta['minutes']:g} min, {meta['concurrency']} clients, {meta['threads']} thread(s) per "
        f"worker, seed {meta['seed']}, "
        f"{meta['machine']}, {meta['cpus']} cores. {total} requests ({total / (meta['minutes'] * 60):.1f}/s), "
        f"{len(soak.kills)} workers SIGKILLed.",
        f"Rerun: `{meta['command']}`", "",
        "| check | result |", "|---|---|",
        *[f"| {name} | {'pass' if good else '**FAIL**'} |" for name, good in ok.items()], "",
        "| outcome | requests |", "|---|---|",
        *[f"| {k} | {n} |" for k, n in by_outcome.most_common()], "",
        "| error (request kind) | count |", "|---|---|",
        *([f"| {k} | {n} |" for k, n in errors.most_common()] or ["| none | 0 |"]), "",
        "| request kind | ok | p50 s | p95 s |", "|---|---|---|---|",
        *[f"| {k} | {len(v)} | {_pct(v, 0.5):.2f} | {_pct(v, 0.95):.2f} |" for k, v in sorted(soak.latency.items())],
        "",
        "| memory and fds | idle baseline | idle end | end / baseline | max under load |", "|---|---|---|---|---|",
        f"| tree PSS MiB | {base['pss'] / mib:.1f} | {end['pss'] / mib:.1f} | {end['pss'] / base['pss']:.3f} | "
        f"{max(pss) / mib:.1f} |",
        f"| daemon open fds | {base['fds']:.0f} | {end['fds']:.0f} | {end['fds'] / base['fds']:.3f} | {max(fds)} |",
        "", f"Scheduler at the end: {st['stats']}",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sample-every", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1,
                    help="llama.cpp threads per worker (1: a worker never spin-waits for a sibling thread another "
                         "process's load has descheduled, and two models decode at once on two cores)")
    args = ap.parse_args(argv)
    root = private_root()
    d = Daemon(root, test_config(root), env={"SWARM_EDGE_THREADS": str(args.threads)}).start()
    soak = Soak(d, args.seed, args.concurrency)
    try:
        print("warming up ...", file=sys.stderr, flush=True)
        warm(d)
        settle(d)
        base = idle_level(soak)
        print(f"baseline: PSS {base['pss'] / 2**20:.1f} MiB, {base['fds']:.0f} fds; "
              f"{args.minutes} min of load ...", file=sys.stderr, flush=True)
        stop = threading.Event()
        sampler = threading.Thread(target=soak.sampler, args=(args.sample_every, stop), daemon=True)
        sampler.start()
        t0 = time.monotonic()
        try:
            asyncio.run(soak.run(args.minutes * 60))
        finally:
            stop.set()
            sampler.join()
        loaded_s = time.monotonic() - t0
        alive = d.proc.poll() is None
        st = settle(d) if alive else {"waiting": -1, "streams_open": -1, "residents": [], "stats": {}}
        leases = {"waiting": st["waiting"], "streams_open": st["streams_open"],
                  "in_use": {r["model"]: r["in_use"] for r in st["residents"]}}
        warm(d)
        end = idle_level(soak)
        final = d.status()
        # every worker process is a resident model's or the spare (which status does not name: at most one)
        others = [p for p in workers(d.proc.pid) if p not in {r["pid"] for r in final["residents"]}]
        extra = others[1:]
        ok = checks(st, base, end, sum(n for (_, o), n in soak.outcomes.items() if o == "hang"), extra, alive)
        log = d.output()
        meta = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine(), "cpus": os.cpu_count(),
                "python": platform.python_version(), "minutes": args.minutes, "load_s": round(loaded_s, 1),
                "concurrency": args.concurrency, "seed": args.seed, "kinds": KINDS, "hangup_share": HANGUP_SHARE,
                "kill_share": KILL_SHARE, "command": "nice -n 5 .venv/bin/python benchmarks/bench_soak.py "
                f"--minutes {args.minutes:g}" + (f" --concurrency {args.concurrency}" if args.concurrency != 4 else "")
                + (f" --seed {args.seed}" if args.seed != 1 else "")
                + (f" --threads {args.threads}" if args.threads != 1 else ""), "threads": args.threads}
        data = {"meta": meta, "checks": ok, "passed": all(ok.values()),
                "outcomes": [{"kind": k, "outcome": o, "count": n} for (k, o), n in sorted(soak.outcomes.items())],
                "latency_s": {k: {"ok": len(v), "p50": _pct(v, 0.5), "p95": _pct(v, 0.95)}
                              for k, v in soak.latency.items()},
                "kills": soak.kills, "baseline": base, "end": end, "leases_after_load": leases,
                "extra_workers": extra, "scheduler_stats": final["stats"],
                "log_tracebacks": log.count("Traceback"), "samples": soak.samples}
        write_results("soak", data, report(meta, soak, base, end, final, ok))
        if not data["passed"]:
            print(f"FAILED: {[k for k, v in ok.items() if not v]}\n--- daemon log (tail) ---\n{log[-4000:]}",
                  file=sys.stderr)
        return 0 if data["passed"] else 1
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
