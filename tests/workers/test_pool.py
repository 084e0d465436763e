"""Real worker processes (forkserver + llama.cpp / onnxruntime) under the real scheduler."""

from __future__ import annotations

import asyncio
import os
import signal

import psutil
import pytest

from swarm_edge.engine import Engine, tree_pss
from swarm_edge.errors import BudgetError, CorruptModelError, ModelLoadError, WorkerCrashedError
from swarm_edge.workers import GenerateRequest

pytestmark = pytest.mark.real_model
HELLO = GenerateRequest(messages=[{"role": "user", "content": "Say hello in five words."}], max_tokens=12)


def run(coro, timeout=120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def collect(engine, model_id, request=HELLO):
    return [e async for e in engine.generate(model_id, request)]


def test_worker_generates_and_embeds_in_its_own_process(test_registry, settings):
    async def main():
        engine = Engine(test_registry, settings, budget="4GiB")
        await engine.start()
        try:
            events = await collect(engine, "smollm2-135m")
            vecs = await engine.embed("minilm-l6", ["hello world", "bonjour le monde"])
            pids = {r.worker.pid for r in engine.scheduler.residents.values()}
            return events, vecs, pids
        finally:
            await engine.close()

    events, vecs, pids = run(main())
    assert events[-1]["type"] == "done" and any(e["type"] == "token" for e in events)
    assert len(vecs) == 2 and len(vecs[0]) == 384
    assert len(pids) == 2 and os.getpid() not in pids
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


def test_sigkilled_worker_fails_only_its_request_then_reloads(test_registry, settings):
    async def main():
        engine = Engine(test_registry, settings, budget="4GiB")
        await engine.start()
        try:
            await collect(engine, "smollm2-135m")
            pid = engine.scheduler.residents["smollm2-135m"].worker.pid
            long = GenerateRequest(prompt="Count: 1, 2, 3,", max_tokens=400)
            with pytest.raises(WorkerCrashedError, match="SIGKILL"):
                async for event in engine.generate("smollm2-135m", long):
                    if event["type"] == "token":
                        os.kill(pid, signal.SIGKILL)
            assert "smollm2-135m" not in engine.scheduler.residents  # its budget is free
            assert engine.scheduler.stats.crashes == 1
            events = await collect(engine, "smollm2-135m")  # the next request reloads it
            new_pid = engine.scheduler.residents["smollm2-135m"].worker.pid
            return events, pid, new_pid
        finally:
            await engine.close()

    events, pid, new_pid = run(main())
    assert events[-1]["type"] == "done" and new_pid != pid


def test_client_gone_mid_stream_cancels_and_keeps_worker(test_registry, settings):
    async def main():
        engine = Engine(test_registry, settings, budget="4GiB")
        await engine.start()
        try:
            stream = engine.generate("smollm2-135m", GenerateRequest(prompt="Once upon a time", max_tokens=300))
            async for event in stream:
                if event["type"] == "token":
                    break  # the client disconnects after one token
            await stream.aclose()
            r = engine.scheduler.residents["smollm2-135m"]
            assert r.refs == 0 and not r.busy.locked()
            events = await collect(engine, "smollm2-135m")  # same worker, still healthy
            return events, r.worker.alive
        finally:
            await engine.close()

    events, alive = run(main())
    assert events[-1]["type"] == "done" and alive


def test_corrupt_model_is_refused_before_any_worker_starts(test_registry, settings, tmp_path, model_files):
    data = model_files["smollm2-135m"]["model"].read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data[:8] + (2**50).to_bytes(8, "little") + data[16:])

    async def main():
        engine = Engine(test_registry, settings, budget="4GiB")
        engine._files["smollm2-135m"] = {"model": bad}  # bypass the sha check: the worker must still refuse
        await engine.start()
        try:
            for _ in range(2):
                with pytest.raises(CorruptModelError, match="implausible"):
                    await collect(engine, "smollm2-135m")
            return len(engine.scheduler.residents) + len(engine.scheduler._stopping), engine.pool.spawned
        finally:
            await engine.close()

    reserved, spawned = run(main())
    assert reserved == 0 and spawned == 0


def test_budget_too_small_names_both_numbers(test_registry, settings):
    async def main():
        engine = Engine(test_registry, settings, budget="100MiB")
        try:
            await collect(engine, "smollm2-135m")
        finally:
            await engine.close()

    with pytest.raises(BudgetError, match=r"smollm2-135m needs about [\d,]+ MiB but the budget is 100 MiB"):
        run(main())


def test_swapping_stays_inside_the_budget(test_registry, settings):
    """Budget for one model at a time: alternate requests force swaps; the whole process tree's PSS,
    sampled every 20 ms, never exceeds the budget."""

    async def main():
        engine = Engine(test_registry, settings, budget="4GiB")
        await engine.start()
        await collect(engine, "smollm2-135m")  # calibrate both models
        await engine.embed("minilm-l6", ["x"])
        for r in list(engine.scheduler.residents.values()):
            await engine.scheduler._drop(r)
        need = max(engine.estimate("smollm2-135m"), engine.estimate("minilm-l6"))
        budget = engine.base_pss() + need + 32 * 2**20   # room for one model, never both
        engine.scheduler.budget = budget
        peak = 0
        stop = asyncio.Event()

        async def sample():
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, await asyncio.to_thread(tree_pss))
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        evictions_before = engine.scheduler.stats.evictions
        try:
            for _ in range(3):
                await collect(engine, "smollm2-135m")
                await engine.embed("minilm-l6", ["a sentence to embed"])
        finally:
            stop.set()
            await sampler
            evictions = engine.scheduler.stats.evictions - evictions_before
            await engine.close()
        return peak, budget, evictions

    peak, budget, evictions = run(main(), timeout=240)
    assert evictions >= 5
    assert peak <= budget, f"peak PSS {peak / 2**20:.0f} MiB over budget {budget / 2**20:.0f} MiB"


def test_load_failure_from_missing_runtime_is_clear(test_registry, settings, monkeypatch):
    async def main():
        engine = Engine(test_registry, settings, budget="4GiB")
        engine._files["smollm2-135m"] = {"model": settings.home / "nope.gguf"}
        try:
            await collect(engine, "smollm2-135m")
        finally:
            await engine.close()

    with pytest.raises((ModelLoadError, CorruptModelError), match="nope.gguf"):
        run(main())


def test_first_load_calibrates_and_the_formula_is_an_upper_bound(test_registry, settings):
    async def main():
        engine = Engine(test_registry, settings, budget="4GiB")
        await engine.start()
        try:
            before = engine.estimate_detail("smollm2-135m")
            await collect(engine, "smollm2-135m")
            measured = engine.scheduler.residents["smollm2-135m"].worker.info["calibration_pss"]
            after = engine.estimate_detail("smollm2-135m")
            return before, measured, after
        finally:
            await engine.close()

    before, measured, after = run(main())
    assert before.source == "formula" and after.source == "calibrated"
    assert before.bytes >= measured  # the uncalibrated formula never under-estimates
    assert measured <= after.bytes <= before.bytes
