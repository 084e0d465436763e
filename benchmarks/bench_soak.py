"""Soak: minutes of mixed load through one real daemon while clients hang up and workers are killed; afterwards
nothing may be left over.

One `swarm-edge serve` (--offline) over the test models in .cache/test-home (smollm2-135m, its twin smollm2-135m-b,
minilm-l6) with the tests' swarm routes, so `auto` is routed by the semantic router (chat; rewrite: a cascade;
classify: an ensemble; math: the calculator). --concurrency clients send requests for --minutes: chat streamed and
not, completions, embeddings, `auto` chats and Ollama NDJSON chats. 30% of the streams hang up after a few tokens;
5% of the requests are followed, 0-1.5 s after they are sent, by a SIGKILL of a random resident worker (whatever
ran on it fails with worker_crashed; the next request reloads the model). Every --sample-every seconds: the PSS
of the daemon's process tree (swarm_edge.boxmem.tree_pss) and the daemon's open file descriptors.

Baseline: fresh workers, the warm-up (a long prompt for each chat model, a full embedding batch, then
--warmup-requests of the mixed load without faults, the same requests every time), an idle settle. End: after
the load and a settle (when leases are checked), every resident worker is SIGKILLed, then the same warm-up and
idle settle, so fresh workers with the same history are compared: a worker's private memory grows for its
first ~100 requests as llama.cpp touches its preallocated KV cells and compute buffers (measured: ~+27 MiB for
smollm2-135m, flat after), which is not what this looks for; the daemon, the forkserver, the resource tracker,
descriptors and processes are what must come back. The models are private copies made for the run: PSS splits a
page among every process on the machine that maps it, and other daemons mapping the same model files moved a
worker's PSS by ~90 MiB. Checks: no leaked lease (status: every in_use, waiting and streams_open 0), no request
hung, no worker process beyond the residents and the spare, tree PSS and open fds within +-5% of the baseline, no
traceback in the daemon's log, the daemon alive. The JSON has each process's PSS at the baseline and the end,
and the daemon's own PSS in every sample, to tell where a difference comes from.

Rerun:  nice -n 5 .venv/bin/python benchmarks/bench_soak.py [--minutes 30] [--warmup-requests 60] [--concurrency 4]
        [--seed 1] [--threads 1]
Writes: benchmarks/results/soak.json and benchmarks/results/soak.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

from swarm_edge.boxmem import tree_pss  # noqa: E402
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
    """models.yaml of the API tests with the swarm routes, over private copies of the test models already in
    .cache/test-home (copies: no other process on the machine maps their pages, see the module docstring)."""
    from swarm_edge.config import DEFAULT_CONFIG, Settings
    from swarm_edge.registry import load_registry
    from swarm_edge.sources import ensure_model
    from tests.conftest import TEST_MODELS, registry_yaml

    home = Path(os.environ.get("SWARM_EDGE_TEST_HOME", REPO / ".cache" / "test-home"))
    settings = Settings.load(home=home, config=DEFAULT_CONFIG, threads=2)
    registry = load_registry(DEFAULT_CONFIG)
    files = {m: ensure_model(settings, registry.get(m), registry.base_dir, fetch=False) for m in TEST_MODELS}
    (root / "files").mkdir()
    files = {m: {role: Path(shutil.copy(f, root / "files" / f"{m}-{f.name}")) for role, f in fs.items()}
             for m, fs in files.items()}
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


async def _one(http: httpx2.AsyncClient, kind: str, rng: random.Random, hangups: float) -> str:
    path, body, streamed = _request(kind, rng)
    if not streamed:
        r = await http.post(path, json=body)
        return "ok" if r.status_code == 200 else _error_of(r.status_code, r.text, r.headers)
    hang_up = rng.random() < hangups
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


# ---------------------------------------------------------------- the daemon's processes


def processes(pid: int) -> list[dict]:
    """Every process of the daemon's tree: role, pid, PSS in MiB, state (for the JSON)."""
    out = []
    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:
        try:
            cmd = " ".join(p.cmdline())
            role = ("daemon" if p.pid == pid else "worker" if p.name() == "swarm-edge-wkr" else  # the daemon's child
                    "forkserver" if "forkserver import main" in cmd else "resource_tracker")
            out.append({"role": role, "pid": p.pid, "pss_mib": round(p.memory_full_info().pss / 2**20, 1),
                        "status": p.status(), "started": time.strftime("%H:%M:%S", time.localtime(p.create_time()))})
        except psutil.Error:
            continue  # exited while we looked
    return out


# ---------------------------------------------------------------- the soak


class Soak:
    """The daemon under load, its samples and its tallies (faults or not)."""

    def __init__(self, d: Daemon, seed: int, concurrency: int) -> None:
        self.d, self.rng, self.concurrency = d, random.Random(seed), concurrency
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.latency: dict[str, list[float]] = {}
        self.kills: list[dict] = []
        self.samples: list[dict] = []
        self._tasks: set[asyncio.Task] = set()

    def sample(self) -> dict:
        """PSS of the daemon's tree and of the daemon alone, and the daemon's open fds, now."""
        pid = self.d.proc.pid
        return {"t": time.time(), "pss": tree_pss(pid), "daemon_pss": psutil.Process(pid).memory_full_info().pss,
                "fds": psutil.Process(pid).num_fds()}

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

    async def client(self, http: httpx2.AsyncClient, until: float, left: list[int], rng: random.Random,
                     faults: bool, tally: Counter) -> None:
        kinds, weights = list(KINDS), list(KINDS.values())
        while time.monotonic() < until and left[0] > 0:
            left[0] -= 1
            kind = rng.choices(kinds, weights)[0]
            if faults and rng.random() < KILL_SHARE:
                task = asyncio.get_running_loop().create_task(self.kill_later(rng.uniform(0, 1.5)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            t0 = time.monotonic()
            try:
                outcome = await asyncio.wait_for(_one(http, kind, rng, HANGUP_SHARE if faults else 0.0), HANG_S)
            except asyncio.TimeoutError:
                outcome = "hang"
            except httpx2.HTTPError as exc:
                outcome = f"exception:{type(exc).__name__}"
            tally[(kind, outcome)] += 1
            if faults and outcome == "ok":
                self.latency.setdefault(kind, []).append(time.monotonic() - t0)

    async def run(self, seconds: float = float("inf"), requests: int = 1 << 62, *, faults: bool = True,
                  rng: random.Random | None = None) -> Counter:
        """Mixed load for `seconds` or `requests`; with `faults`, hang-ups and kills, tallied in `outcomes`.
        Returns the tally."""
        tally: Counter[tuple[str, str]] = self.outcomes if faults else Counter()
        rng, left = rng or self.rng, [requests]
        transport = httpx2.AsyncHTTPTransport(uds=str(self.d.socket))
        async with httpx2.AsyncClient(transport=transport, base_url="http://swarm-edge", timeout=HANG_S) as http:
            until = time.monotonic() + seconds
            await asyncio.gather(*(self.client(http, until, left, rng, faults, tally)
                                   for _ in range(self.concurrency)))
            await asyncio.gather(*self._tasks)  # kills scheduled by the last requests
        return tally


LONG = "Summarise this: " + " ".join(f"item {i} is blue;" for i in range(90))   # ~700 tokens of 1024
WARM = [*[("/v1/chat/completions", {"model": m, "max_tokens": 64, "cache_prompt": False,
                                     "messages": [{"role": "user", "content": LONG}]}) for m in CHAT_MODELS],
        ("/v1/embeddings", {"model": "minilm-l6", "input": [LONG[:600]] * 32})]


def warm(soak: Soak, requests: int) -> dict:
    """Bring every model to its working size (a long prompt and answer for each chat model, a full embedding
    batch), then `requests` of the mixed load without faults, the same ones every time. Returns what was not a
    success, by kind."""
    failed: Counter[str] = Counter()
    for path, body in WARM:
        for _ in range(5):  # a model killed a moment ago answers once reloaded
            r = soak.d.http.post(path, json=body)
            if r.status_code == 200:
                break
            failed[f"{body['model']}: {_error_of(r.status_code, r.text, r.headers)}"] += 1
            time.sleep(1)
        else:
            raise RuntimeError(f"{body['model']} did not answer: {r.status_code} {r.text[:300]}")
    tally = asyncio.run(soak.run(requests=requests, faults=False, rng=random.Random(1000)))
    failed.update({f"{k}: {o}": n for (k, o), n in tally.items() if o != "ok"})
    return dict(failed)


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
    """Median PSS and fds of `n` samples taken after `seconds` of idling, and each process's PSS."""
    time.sleep(seconds)
    got = []
    for _ in range(n):
        got.append(soak.sample())
        time.sleep(1)
    return {"pss": statistics.median(s["pss"] for s in got), "fds": statistics.median(s["fds"] for s in got),
            "processes": processes(soak.d.proc.pid)}


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def checks(st: dict, base: dict, end: dict, hangs: int, extra_workers: list, tracebacks: int,
           alive: bool) -> dict[str, bool]:
    """Each end-of-soak check: True if it holds."""
    return {
        "no leaked lease (in_use, waiting, streams_open all 0)": st["waiting"] == 0 and st["streams_open"] == 0
        and all(r["in_use"] == 0 for r in st["residents"]),
        "no request hung": hangs == 0,
        "no worker beyond the residents and the spare": not extra_workers,
        f"tree PSS within +-{TOLERANCE:.0%} of the baseline": abs(end["pss"] / base["pss"] - 1) <= TOLERANCE,
        f"open fds within +-{TOLERANCE:.0%} of the baseline": abs(end["fds"] / base["fds"] - 1) <= TOLERANCE,
        "no traceback in the daemon's log": tracebacks == 0,
        "daemon alive": alive,
    }


def _by_role(level: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in level["processes"]:
        out[p["role"]] = round(out.get(p["role"], 0.0) + p["pss_mib"], 1)
    return out


def report(meta: dict, soak: Soak, base: dict, end: dict, st: dict, ok: dict[str, bool], warm_failed: dict,
           tracebacks: list[str], extra: list[dict]) -> list[str]:
    """The Markdown lines of soak.md."""
    mib = 2 ** 20
    by_outcome: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for (kind, outcome), n in soak.outcomes.items():
        by_outcome["error" if outcome.startswith("error") else outcome.split(":")[0]] += n
        if outcome.startswith(("error", "exception")):
            errors[f"{outcome} ({kind})"] += n
    total = sum(soak.outcomes.values())
    pss = [s["pss"] for s in soak.samples] or [0]
    fds = [s["fds"] for s in soak.samples] or [0]
    roles_base, roles_end = _by_role(base), _by_role(end)
    return [
        "# Soak: mixed load through the daemon, clients hanging up, workers killed", "",
        f"{meta['when']}, {meta['minutes']:g} min of load (warm-ups: {meta['warmup_requests']} requests), "
        f"{meta['concurrency']} clients, {meta['threads']} thread(s) per worker, seed {meta['seed']}, "
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
        *[f"| - {role} PSS MiB | {roles_base.get(role, 0):.1f} | {roles_end.get(role, 0):.1f} | "
          f"{roles_end.get(role, 0) / (roles_base.get(role) or 1):.3f} | |" for role in roles_base],
        f"| daemon open fds | {base['fds']:.0f} | {end['fds']:.0f} | {end['fds'] / base['fds']:.3f} | {max(fds)} |",
        "", f"Scheduler at the end: {st['stats']}",
        f"Not a success during the warm-ups (retried; no faults injected): {warm_failed or 'none'}",
        *(["", "Tracebacks in the daemon's log (last lines of each):", "", "```", *tracebacks, "```"]
          if tracebacks else []),
        *(["", "Worker processes that are no resident's (one is the spare): "
           + ", ".join(f"pid {p['pid']} started {p['started']}, {p['pss_mib']} MiB" for p in extra)] if extra else []),
    ]


def _tracebacks(log: str) -> list[str]:
    """The last line of each traceback in the daemon's log (the exception), in order."""
    out = []
    for block in log.split("Traceback (most recent call last):")[1:]:
        lines = [line for line in block.splitlines() if line and not line.startswith((" ", "\t"))]
        out.append(lines[0][:300] if lines else "?")
    return out


def under_load(soak: Soak, args) -> dict:
    """The load with faults, PSS and fds sampled meanwhile; then a settle: the status that leases are checked on."""
    stop = threading.Event()
    sampler = threading.Thread(target=soak.sampler, args=(args.sample_every, stop), daemon=True)
    sampler.start()
    try:
        asyncio.run(soak.run(args.minutes * 60))
    finally:
        stop.set()
        sampler.join()
    if soak.d.proc.poll() is not None:
        return {"waiting": -1, "streams_open": -1, "residents": [], "stats": {}}
    return settle(soak.d)


def fresh_workers(st: dict) -> None:
    """SIGKILL every resident worker and wait until they are gone: the next requests load fresh ones."""
    procs = []
    for r in st["residents"]:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(r["pid"]))
            procs[-1].kill()
    psutil.wait_procs(procs, timeout=10)


def soak_once(d: Daemon, args) -> tuple[dict, list[str]]:
    """Warm-up, baseline, load with faults, fresh workers, warm-up, end level, checks: (the JSON, the table)."""
    soak = Soak(d, args.seed, args.concurrency)
    print("warming up ...", file=sys.stderr, flush=True)
    warm_failed = [warm(soak, args.warmup_requests)]
    settle(d)
    base = idle_level(soak)
    print(f"baseline: PSS {base['pss'] / 2**20:.1f} MiB, {base['fds']:.0f} fds; {args.minutes:g} min of load ...",
          file=sys.stderr, flush=True)
    st = under_load(soak, args)
    alive = d.proc.poll() is None
    print("fresh workers, warming up again ...", file=sys.stderr, flush=True)
    fresh_workers(st)
    warm_failed.append(warm(soak, args.warmup_requests))
    settle(d)
    end = idle_level(soak)
    final = d.status()
    # every worker process is a resident model's or the spare (which status does not name): one more is a leak
    others = [p for p in end["processes"] if p["role"] == "worker"
              and p["pid"] not in {r["pid"] for r in final["residents"]}]
    extra = others if len(others) > 1 else []
    tracebacks = _tracebacks(d.output())
    ok = checks(st, base, end, sum(n for (_, o), n in soak.outcomes.items() if o == "hang"), extra,
                len(tracebacks), alive)
    meta = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "minutes": args.minutes, "warmup_requests": args.warmup_requests,
            "concurrency": args.concurrency, "seed": args.seed, "threads": args.threads, "kinds": KINDS,
            "hangup_share": HANGUP_SHARE, "kill_share": KILL_SHARE, "command": args.command}
    failed = {f"{when}: {k}": v for when, w in zip(("before", "after"), warm_failed, strict=True) for k, v in w.items()}
    data = {"meta": meta, "checks": ok, "passed": all(ok.values()),
            "outcomes": [{"kind": k, "outcome": o, "count": n} for (k, o), n in sorted(soak.outcomes.items())],
            "latency_s": {k: {"ok": len(v), "p50": _pct(v, 0.5), "p95": _pct(v, 0.95)}
                          for k, v in soak.latency.items()},
            "kills": soak.kills, "baseline": base, "end": end,
            "leases_after_load": {"waiting": st["waiting"], "streams_open": st["streams_open"],
                                  "in_use": {r["model"]: r["in_use"] for r in st["residents"]}},
            "residents_at_end": [{k: r[k] for k in ("model", "pid", "pss", "uses")} for r in final["residents"]],
            "non_resident_workers": others, "scheduler_stats": final["stats"], "warm_up_failures": failed,
            "tracebacks": tracebacks, "samples": soak.samples}
    return data, report(meta, soak, base, end, final, ok, failed, tracebacks, extra)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--warmup-requests", type=int, default=60)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sample-every", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1,
                    help="llama.cpp threads per worker (1: a worker never spin-waits for a sibling thread another "
                         "process's load has descheduled, and two models decode at once on two cores)")
    args = ap.parse_args(argv)
    args.command = " ".join(["nice -n 5 .venv/bin/python benchmarks/bench_soak.py",
                             *(sys.argv[1:] if argv is None else argv)])
    root = private_root()
    d = Daemon(root, test_config(root), env={"SWARM_EDGE_THREADS": str(args.threads)}).start()
    try:
        data, lines = soak_once(d, args)
    finally:
        log = d.output()
        d.stop()
        shutil.rmtree(root, ignore_errors=True)
    write_results("soak", data, lines)
    if not data["passed"]:
        print(f"FAILED: {[k for k, v in data['checks'].items() if not v]}\n--- daemon log (tail) ---\n{log[-4000:]}",
              file=sys.stderr)
    return 0 if data["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
