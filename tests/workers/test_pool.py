"""Real worker processes (forkserver + llama.cpp / onnxruntime) under the real scheduler."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import signal
import subprocess
import time

import psutil
import pytest

from swarm_edge.api.schemas import MAX_INPUTS
from swarm_edge.boxmem import tree_pss
from swarm_edge.engine import Engine
from swarm_edge.errors import BudgetError, CorruptModelError, InferenceError, ModelLoadError, WorkerCrashedError
from swarm_edge.workers import GenerateRequest
from swarm_edge.workers.direct import Framing, Sink
from swarm_edge.workers.pool import EMBED_FRAME, MAX_FRAME, Worker, _decode, _send, _serve, _slices

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


def _is_subreaper() -> bool:
    import ctypes

    flag = ctypes.c_int(-1)
    assert ctypes.CDLL(None, use_errno=True).prctl(37, ctypes.byref(flag), 0, 0, 0) == 0  # PR_GET_CHILD_SUBREAPER
    return bool(flag.value)


def test_resident_workers_outlive_the_forkserver_and_the_daemon_reads_their_exit_itself(test_registry, settings):
    """Workers leave the forkserver as they start (process.py) and are this process's children (a child subreaper),
    so the forkserver and the spare can stop under a resident model (idle.py's doze). The exit status is read by
    waitpid here: multiprocessing's handle would have read 255 from the forkserver's pipe, and said so."""
    from multiprocessing import forkserver

    async def main():
        engine = Engine(test_registry, settings, budget="4GiB")
        await engine.start()
        try:
            assert engine.pool.adopted
            await collect(engine, "smollm2-135m")
            worker = engine.scheduler.residents["smollm2-135m"].worker
            server = forkserver._forkserver._forkserver_pid
            assert psutil.Process(worker.pid).ppid() == os.getpid()  # not the forkserver's
            assert psutil.Process(worker.pid).name() == "swarm-edge-wkr"
            # a subreaper only while a worker is forked: another child's orphan is not handed to this process
            if engine.pool._refill is not None:  # the spare's refill is a fork too: after it
                await asyncio.gather(engine.pool._refill, return_exceptions=True)
            assert not _is_subreaper()
            shell = subprocess.run(["sh", "-c", "sleep 30 >/dev/null 2>&1 </dev/null & echo $!"], capture_output=True,
                                   text=True, check=True, timeout=10)
            orphan = psutil.Process(int(shell.stdout))
            try:
                assert orphan.ppid() != os.getpid()
            finally:
                orphan.kill()
            assert await engine.pool.sleep()  # the spare and the forkserver stop; the model stays
            assert not engine.pool.running and not psutil.pid_exists(server)
            events = await collect(engine, "smollm2-135m")
            assert events[-1]["type"] == "done" and worker.alive
            long = GenerateRequest(prompt="Count: 1, 2, 3,", max_tokens=400)
            with pytest.raises(WorkerCrashedError, match="killed by SIGKILL"):
                async for event in engine.generate("smollm2-135m", long):
                    if event["type"] == "token":
                        os.kill(worker.pid, signal.SIGKILL)
            assert worker.process.exitcode == -signal.SIGKILL and worker.pid not in engine.pool.pids()
            again = await collect(engine, "smollm2-135m")  # the load starts the forkserver again
            return events, again, engine.pool.running
        finally:
            await engine.close()

    events, again, running = run(main())
    assert again[-1]["type"] == "done" and running


def test_a_stopped_spare_is_replaced_not_waited_for(test_registry, settings):
    """Regression: a SIGSTOPped spare worker took the next load, which then waited LOAD_TIMEOUT_S (300 s)."""
    async def main():
        engine = Engine(test_registry, settings, budget="4GiB")
        await engine.start()
        try:
            await engine.pool.prepare_spare()
            spare = engine.pool.spare_pid()
            os.kill(spare, signal.SIGSTOP)
            t0 = time.monotonic()
            events = await asyncio.wait_for(collect(engine, "smollm2-135m"), 60)
            took = time.monotonic() - t0
            pid = engine.scheduler.residents["smollm2-135m"].worker.pid
            return events, spare, pid, took
        finally:
            await engine.close()

    events, spare, pid, took = run(main(), timeout=180)
    assert events[-1]["type"] == "done" and pid != spare, (spare, pid)
    assert not psutil.pid_exists(spare) or psutil.Process(spare).status() == psutil.STATUS_ZOMBIE
    print(f"\nload with a stopped spare: {took:.1f} s")


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


def test_a_direct_generation_dropped_or_read_before_its_hand_over(test_registry, settings):
    """A direct generation dropped before its hand-over leaves the worker in step, and one that is read without a
    hand-over is relayed, not held forever."""
    async def main():
        engine = Engine(test_registry, settings, budget="4GiB")
        await engine.start()
        try:
            async with engine.session("smollm2-135m") as session:
                worker = session.worker
                await worker.begin(HELLO, Sink())
                await worker.abandon()  # a response that failed before its head
                sink = Sink()
                await worker.begin(HELLO, sink)
                events = [e async for e in worker.generate(HELLO, sent=True)]
                refused = worker.hand_over(Framing('{"t": "\\u0000"}'), None)  # too late: it was relayed
                again = [e async for e in worker.generate(HELLO)]
            return events, again, refused, sink
        finally:
            await engine.close()

    events, again, refused, sink = run(main())
    assert [e["type"] for e in events if e["type"] != "token"] == ["done"]  # relayed tokens, not one "sent" event
    assert sum(e["type"] == "token" for e in events) >= 1
    assert again[-1]["type"] == "done" and not refused and not sink.direct


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


@pytest.mark.fresh_home
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


# ---------------------------------------------------------------- frames: stand-in workers, no model needed


def _fork(target, *args):
    """A real process on a real pipe running target(its end, *args): what the daemon sees of a worker."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=True)
    process = ctx.Process(target=target, args=(child, *args), daemon=True)
    process.start()
    child.close()
    return process, parent


def _nested_reply(conn, depth):
    """Fake worker: answers the first request with one frame of lists nested `depth` deep, then hangs."""
    conn.recv_bytes()
    conn.send_bytes(b"[" * depth + b"]" * depth)
    time.sleep(60)


class FakeEmbedder:
    """Fake backend: returns the vectors it was given, standing in for a 1536-dimension embedding model."""

    last_tokens = 4096

    def __init__(self, vectors):
        self.vectors = vectors

    def embed(self, texts):
        assert len(texts) == len(self.vectors)
        return self.vectors


@pytest.mark.parametrize("frame", [b"[" * 100_000 + b"]" * 100_000, b'{"kind": ' * 50_000, b"{", b"\xff\xfe",
                                   b"[1]", b"7", b'{"kind": 5}', b'{"no": "kind"}', b'{"kind": "_dead"}'])
def test_a_bad_frame_is_a_value_error(frame):
    with pytest.raises(ValueError):
        _decode(frame)
    assert _decode(b'{"kind": "end", "pss": 1}') == {"kind": "end", "pss": 1}


def test_deeply_nested_frame_kills_the_worker_with_a_protocol_error():
    async def main():
        process, parent = _fork(_nested_reply, 100_000)
        worker = Worker("fake", process, parent, asyncio.get_running_loop())
        try:
            with pytest.raises(WorkerCrashedError, match=r"SIGKILL after it broke the protocol .*nested too deeply"):
                await worker.embed(["x"])
            return worker.alive, process
        finally:
            await worker.stop()

    alive, process = run(main(), timeout=30)
    assert not alive and process.exitcode == -signal.SIGKILL


def test_embedding_slices_stay_under_the_frame_size():
    """Fake payload: every float is the longest JSON writes, so the size bound is met at its worst."""
    vectors = [[-2.2250738585072014e-308] * 1536 for _ in range(300)]
    slices = _slices(vectors)
    assert len(slices) > 1 and [v for part in slices for v in part] == vectors
    assert all(len(json.dumps(part)) <= EMBED_FRAME for part in slices)
    assert _slices([]) == [[]] and _slices([[0.5]]) == [[[0.5]]]


def test_a_message_over_the_frame_limit_fails_the_request_not_the_worker():
    sent = []

    class Pipe:
        """Fake pipe end: keeps what would have been sent."""

        def send_bytes(self, data):
            sent.append(data)

    with pytest.raises(InferenceError, match="over the 67,108,864-byte frame limit"):
        _send(Pipe(), "event", event={"text": "x" * MAX_FRAME})
    _send(Pipe(), "end", pss=1)
    assert [json.loads(m) for m in sent] == [{"kind": "end", "pss": 1}]


def test_2048_embeddings_of_1536_dimensions_come_back_whole():
    """Fake backend (FakeEmbedder) in a real worker loop, pipe and daemon-side reader: the API's most inputs at a
    1536-dimension model's width are about 70 MB of JSON, more than one frame may carry; they arrive exact."""
    rnd = random.Random(5)
    base = [rnd.gauss(0, 0.05) for _ in range(1536)]
    vectors = [base[i:] + base[:i] for i in range(MAX_INPUTS)]  # every row the same JSON length
    assert MAX_INPUTS == 2048 and len(json.dumps(base)) * MAX_INPUTS > MAX_FRAME  # one frame could not carry it

    async def main():
        process, parent = _fork(_serve, FakeEmbedder(vectors))
        worker = Worker("fake-1536", process, parent, asyncio.get_running_loop())
        try:
            got = await worker.embed(["a text"] * MAX_INPUTS)
            return got, worker.last_embed_tokens, worker.alive
        finally:
            await worker.stop()

    got, tokens, alive = run(main(), timeout=120)
    assert alive and tokens == 4096 and got == vectors


def test_a_worker_not_handed_to_this_process_makes_the_pool_fall_back_to_the_forkserver():
    """Where the kernel does not hand a worker that left the forkserver to this process (a FAKE here: the pool tells
    its workers to expect pid 1 as their parent), the worker says so and exits, the pool reaps it, and it forks its
    workers the old way from then on (the forkserver's children; the daemon never dozes)."""
    from swarm_edge.workers.limits import off_loop
    from swarm_edge.workers.pool import Pool

    def zombies() -> set[int]:
        return {c.pid for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE}

    async def main():
        pool = Pool()
        assert pool.adopted
        pool.daemon_pid = 1
        before = zombies()
        process, conn = await off_loop(pool._fork)
        try:
            old_way = isinstance(process, multiprocessing.process.BaseProcess)
            return pool.adopted, old_way, process.is_alive(), zombies() - before
        finally:
            conn.close()
            process.join(10)

    adopted, old_way, alive, left = run(main())
    assert not adopted and old_way and alive
    assert not left, f"unreaped: {left}"
