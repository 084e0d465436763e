"""Load: 300 requests at concurrency 8 across three models, with a budget that fits one model at a time,
and 30% of the streaming clients hanging up mid-stream. Every request must end in a success or an explicit
503; none may hang; afterwards no lease, stream, file descriptor or worker process may be left over; and
the memory in use never exceeds the budget."""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading

import httpx2
import pytest

from swarm_edge.boxmem import tree_pss
from tests.api.conftest import Daemon, private_root, worker_processes

pytestmark = pytest.mark.real_model

MODELS = ["smollm2-135m", "smollm2-135m-b", "minilm-l6"]
REQUESTS, CONCURRENCY, HANGUP_SHARE = 300, 8, 0.3


def _warm(d: Daemon) -> None:
    for model in MODELS:
        if model == "minilm-l6":
            r = d.http.post("/v1/embeddings", json={"model": model, "input": ["warm up"]})
        else:
            r = d.http.post("/v1/chat/completions", json={"model": model, "max_tokens": 2,
                                                          "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _one(http: httpx2.AsyncClient, i: int, rng: random.Random) -> str:
    model = MODELS[i % 3]
    if model == "minilm-l6":
        r = await http.post("/v1/embeddings", json={"model": model, "input": [f"request {i}", "another text"]})
        if r.status_code == 200:
            assert len(r.json()["data"]) == 2
            return "ok"
        return _refusal(r.status_code, r.headers, r.text)
    body = {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": f"Say something about {i}."}]}
    if rng.random() < 0.5:
        r = await http.post("/v1/chat/completions", json=body)
        if r.status_code == 200:
            assert r.json()["choices"][0]["message"]["content"] is not None
            return "ok"
        return _refusal(r.status_code, r.headers, r.text)
    hang_up = rng.random() < HANGUP_SHARE
    async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        if r.status_code != 200:
            await r.aread()
            return _refusal(r.status_code, r.headers, r.text)
        lines = []
        async for line in r.aiter_lines():
            if hang_up and '"content":"' in line and '"role"' not in line:
                return "hung-up"  # leaving the block closes the connection mid-stream
            lines.append(line)
    assert lines[-2] == "data: [DONE]" or lines[-1] == "data: [DONE]", lines[-3:]
    assert not any('"error"' in line for line in lines), lines
    return "ok"


def _refusal(status: int, headers, text: str) -> str:
    assert status == 503, f"{status}: {text}"
    assert int(headers["retry-after"]) >= 1 and json.loads(text)["error"]["code"] == "server_busy"
    return "503"


async def _run(d: Daemon, budget: int) -> tuple[dict[str, int], list[int]]:
    rng = random.Random(7)
    sem = asyncio.Semaphore(CONCURRENCY)
    transport = httpx2.AsyncHTTPTransport(uds=str(d.socket))
    used: list[tuple[int, dict]] = []
    pss: list[int] = []   # the real thing: PSS of the daemon's whole process tree, sampled from outside
    async with httpx2.AsyncClient(transport=transport, base_url="http://swarm-edge", timeout=120) as http:
        async def guarded(i: int) -> str:
            async with sem:
                return await asyncio.wait_for(_one(http, i, rng), 180)  # a hang fails the test

        async def watch(stop: asyncio.Event) -> None:
            async with httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=str(d.socket)),
                                          base_url="http://swarm-edge", timeout=30) as mon:
                while not stop.is_set():
                    snap = (await mon.get("/swarm/status")).json()
                    used.append((snap["used"], {k: snap[k] for k in ("base", "residents", "waiting")}))
                    await asyncio.sleep(0.25)

        def sample_pss(stop: threading.Event) -> None:
            while not stop.wait(0.2):
                pss.append(tree_pss(d.proc.pid))

        stop, pss_stop = asyncio.Event(), threading.Event()
        watcher = asyncio.create_task(watch(stop))
        sampler = threading.Thread(target=sample_pss, args=(pss_stop,))
        sampler.start()
        try:
            outcomes = await asyncio.gather(*(guarded(i) for i in range(REQUESTS)))
        finally:
            stop.set()
            pss_stop.set()
            await watcher
            sampler.join()
    counts = {k: outcomes.count(k) for k in set(outcomes)}
    return counts, used, pss


def test_300_requests_three_models_one_fits(api_config):
    root = private_root()
    # Two probes: the first calibrates each model's footprint and caches the GGUF facts (in the daemon's home);
    # the second, like the daemon under test, finds both cached, so its base PSS is the one to size against
    # (reading GGUF facts the first time raises a daemon's base for a while).
    for _ in range(2):
        probe = Daemon(root, api_config).start()
        try:
            _warm(probe)
            st = probe.status()
        finally:
            assert probe.stop() == 0
    probe_base = st["base"]
    est = {m: st["models"][m]["estimate"] for m in MODELS}
    # The biggest model fits alone, with room to spare but never next to another one: every switch to or from it
    # evicts (smaller models may share what is left; the estimates decide which, so it is not asserted).
    one = st["base"] + max(est.values())
    # The base moves with how many processes share the preloaded runtimes' pages (PSS splits them): the probe
    # reads it with every model resident; the daemon under test starts asleep and first measures it with only the
    # forkserver and the spare sharing them (seen 42 MiB higher, and admission keeps a minute's highest base).
    # No two other models may fit together either, with a margin: the base moves by ~15 MiB when a worker exits
    # (PSS re-splits the shared pages), and a base that grows while both are in use cannot be evicted away.
    sizes = sorted(est.values())
    room = min(80 * 2**20, sizes[0] + sizes[1] - sizes[-1] - 24 * 2**20)
    assert room >= 50 * 2**20 and min(est.values()) > room + 8 * 2**20, (est, st["base"])
    budget = one + room

    d = Daemon(root, api_config, "--budget", str(budget), "--max-queue", "16").start()
    try:
        _warm(d)
        fds_before = _fds(d.proc.pid)
        counts, used, pss = asyncio.run(_run(d, budget))
        assert sum(counts.values()) == REQUESTS
        assert set(counts) <= {"ok", "503", "hung-up"} and counts.get("ok", 0) >= REQUESTS // 2, counts
        assert counts.get("hung-up", 0) > 10, counts

        for _ in range(100):  # everything settles: no lease, waiter or stream left
            st = d.status()
            if st["waiting"] == 0 and st["streams_open"] == 0 and all(r["in_use"] == 0 for r in st["residents"]):
                break
            asyncio.run(asyncio.sleep(0.1))
        assert st["waiting"] == 0 and st["streams_open"] == 0, st
        assert all(r["in_use"] == 0 and r["state"] == "ready" for r in st["residents"]), st
        # the budget forced swaps (which models stay resident at the end depends on the measured base, which
        # differs a little between the probe daemon that sized the budget and this one: not asserted)
        assert st["stats"]["evictions"] > 10, (st["stats"], budget, st["base"], st["residents"])
        assert st["stats"]["busy_rejections"] == counts.get("503", 0)
        peak = max(used, key=lambda u: u[0])
        at = used.index(peak)
        trail = [(round(u[0] / 2**20, 1), round(u[1]["base"] / 2**20, 1), [(r["model"], r["state"], r["in_use"])
                  for r in u[1]["residents"]]) for u in used[max(0, at - 12):at + 2]]
        assert peak[0] <= budget, (round(budget / 2**20, 1), trail)     # the scheduler's books
        assert len(pss) > 50 and max(pss) <= budget, (max(pss), budget)  # what `ps` would say
        assert _fds(d.proc.pid) <= fds_before + 4
        workers = worker_processes(d.proc.pid)
        resident_pids = {r["pid"] for r in st["residents"]}
        assert resident_pids <= {w.pid for w in workers} and len(workers) <= len(resident_pids) + 1, workers
        ok = d.http.post("/v1/chat/completions", json={"model": "smollm2-135m", "max_tokens": 2,
                                                       "messages": [{"role": "user", "content": "still there?"}]})
        assert ok.status_code == 200
        print(f"\nresidents at the end: {[r['model'] for r in st['residents']]}, base now {st['base'] / 2**20:.0f} MiB")
        print(f"estimates {({m: round(e / 2**20) for m, e in est.items()})} MiB, "
              f"probe base {probe_base / 2**20:.0f} MiB")
        print(f"load: {counts}, evictions {st['stats']['evictions']}, peak booked {peak[0] / 2**20:.0f} MiB, "
              f"peak tree PSS {max(pss) / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB")
    finally:
        assert d.stop() == 0, d.output()
        import shutil

        shutil.rmtree(root, ignore_errors=True)
