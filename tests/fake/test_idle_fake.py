"""The daemon's sleep (idle.py) against FAKE worker processes: the real Sleeper and Pool, with forks, workers and
the forkserver's stop replaced, so the races a second read found are replayed deterministically."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

import swarm_edge.workers.pool as pool_module
from swarm_edge.errors import ModelLoadError
from swarm_edge.idle import Sleeper


class FakeProc:  # FAKE: a worker process
    pid = 999

    def __init__(self) -> None:
        self.alive = True

    def is_alive(self) -> bool:
        return self.alive

    def join(self, timeout=None) -> None:
        time.sleep(0.02)
        self.alive = False

    def kill(self) -> None:
        self.alive = False


class FakeConn:  # FAKE: its pipe
    def close(self) -> None:
        pass


class FakeWorker:  # FAKE: the daemon's handle, loading for 0.3 s
    def __init__(self, *args) -> None:
        self.info: dict = {}

    def order_load(self, *args, **kw) -> None:
        pass

    async def wait_ready(self, timeout) -> None:
        await asyncio.sleep(0.3)


class SlowDropRouter:  # FAKE: the router, whose embedder takes 0.3 s to stop
    loaded = True

    def drop(self) -> bool:
        time.sleep(0.3)
        self.loaded = False
        return True


class Sched:  # FAKE: an empty scheduler
    residents: dict = {}
    waiting = 0


@pytest.fixture()
def fake_pool(monkeypatch):
    stops: list[float] = []
    monkeypatch.setattr(pool_module, "_stop_forkserver", lambda: stops.append(time.monotonic()))
    monkeypatch.setattr(pool_module, "Worker", FakeWorker)
    monkeypatch.setattr(pool_module, "_usable", lambda spare: True)
    pool = pool_module.Pool(preload=[])
    pool._fork = lambda: (FakeProc(), FakeConn())  # type: ignore[method-assign]
    return pool, stops


def test_a_request_during_sleep_keeps_the_forkserver_and_the_daemon_awake(fake_pool):
    pool, stops = fake_pool

    async def main():
        pool._spare = (FakeProc(), FakeConn())
        s = Sleeper(pool, SlowDropRouter(), Sched(), after=0.1)
        s._loop = asyncio.get_running_loop()
        s.last -= 1
        sleeping = asyncio.create_task(s.sleep())
        await asyncio.sleep(0.1)      # the embedder is being dropped
        with s.busy():                # a request: it loads a model meanwhile
            await pool.spawn("m", "gguf", "/x", {})
        slept = await sleeping
        await pool.close()
        return s, slept

    s, slept = asyncio.run(main())
    assert stops == [] and slept is False       # the forkserver (the loading worker's parent) was never stopped
    assert s.asleep is False and s.sleeps == 0


def test_an_idle_daemon_sleeps_and_stops_the_forkserver_once(fake_pool):
    pool, stops = fake_pool

    async def main():
        pool._spare = (FakeProc(), FakeConn())
        s = Sleeper(pool, SlowDropRouter(), Sched(), after=0.1, on_sleep=lambda: forgotten.append(True))
        s._loop = asyncio.get_running_loop()
        s.last -= 1
        assert s.idle()
        return s, await s.sleep()

    forgotten: list[bool] = []
    s, slept = asyncio.run(main())
    assert slept is True and s.asleep is True and s.sleeps == 1 and len(stops) == 1 and forgotten == [True]
    assert pool._spare is None and not s.idle()  # nothing left to give back


def test_a_route_in_flight_keeps_the_daemon_awake(fake_pool):
    pool, stops = fake_pool

    async def main():
        s = Sleeper(pool, SlowDropRouter(), Sched(), after=0.1)
        s._loop = asyncio.get_running_loop()
        s.last -= 1
        with s.route():
            await asyncio.sleep(0)
            return s.idle()

    assert asyncio.run(main()) is False


def test_a_closed_pool_forks_nothing_more(fake_pool):
    """Regression (session 9's finding 11): a spawn that came after Engine.close (a routing thread's embedder)
    forked a worker and a spare refill nobody stopped. A pool closed for good refuses both."""
    pool, _ = fake_pool
    forks: list[int] = []
    pool._fork = lambda: forks.append(1) or (FakeProc(), FakeConn())  # type: ignore[method-assign]

    async def main():
        await pool.close(final=True)
        with pytest.raises(ModelLoadError, match="engine is stopping"):
            await pool.spawn("m", "onnx", "/nowhere", {})
        pool.wake()
        await pool.prepare_spare()
        return pool._refill, pool._spare

    assert asyncio.run(main()) == (None, None) and forks == []


def test_a_router_closed_for_good_loads_no_embedder_again():
    """Regression (finding 11): a warm-up or route thread that reaches the router after the engine's final drop
    must not start an embedder worker; the keyword rules answer it."""
    from swarm_edge.config import DEFAULT_CONFIG
    from swarm_edge.registry import load_registry
    from swarm_edge.router_host import Router

    opened: list[str] = []
    router = Router(load_registry(DEFAULT_CONFIG), lambda mid: {})
    router.opener = lambda spec, files, threads: opened.append(spec.id)  # FAKE opener: records, loads nothing
    assert router.drop(final=True) is False  # nothing was loaded
    router.warm()
    r = router.route("Translate into French: good night")
    assert opened == [] and r.task == "translate" and not router.loaded


def test_closing_the_engine_stops_the_routers_first_training(tmp_path):
    """Regression (the arm64 smoke: a daemon stopped during its first start's head training waited for the whole
    training, 64 s natively on one core, over an hour emulated): the final drop ends the training at the next
    example, closes the embedder, caches nothing, and the rules route meanwhile."""
    import threading

    import numpy as np

    from swarm_edge.config import DEFAULT_CONFIG
    from swarm_edge.registry import load_registry
    from swarm_edge.router_host import Router

    reached, go = threading.Event(), threading.Event()

    class Embedder:  # FAKE backend: zero vectors; its third call waits until the test says go
        calls, closed = 0, False

        def embed_with_prefix(self, text, prefix_chars):
            self.calls += 1
            if self.calls == 3:
                reached.set()
                go.wait(30)
            return np.zeros(384, np.float32), np.zeros(384, np.float32)

        def close(self):
            self.closed = True

    backend = Embedder()
    router = Router(load_registry(DEFAULT_CONFIG), lambda mid: {}, cache_dir=tmp_path)
    router.opener = lambda spec, files, threads: backend
    warming = threading.Thread(target=router.warm)
    warming.start()
    assert reached.wait(30)
    dropping = threading.Thread(target=router.drop, kwargs={"final": True})
    dropping.start()
    for _ in range(3000):  # the final drop says so before it waits for the lock the training holds
        if router._closed:
            break
        dropping.join(0.01)
    go.set()
    dropping.join(30)
    warming.join(30)
    assert not dropping.is_alive() and not warming.is_alive()
    assert backend.calls == 3 and backend.closed and list(tmp_path.iterdir()) == []
    assert "still training" in (router.unavailable or "")
    assert router.route("Translate into French: good night").task == "translate" and not router.loaded



class _RefusingRemote:
    """FAKE remote embedder (the daemon's RemoteEmbedder's interface): zero vectors; refuses the head it is sent
    `refuse` times, then keeps it and scores the first task highest."""

    def __init__(self, refuse: int) -> None:
        self.refuse, self.heads, self.closed = refuse, 0, False

    def embed_with_prefix(self, text, prefix_chars):
        import numpy as np

        return np.zeros(384, np.float32), np.zeros(384, np.float32)

    def load_head(self, wire):
        from swarm_edge.errors import InferenceError

        self.heads += 1
        if self.refuse:
            self.refuse -= 1
            raise InferenceError("the worker could not load the router's head")

    def scores(self, text, head_len, shares, keyword_weight):
        return [1.0] + [0.0] * (len(shares) - 1)

    def close(self):
        self.closed = True


def _plans_router(tmp_path, monkeypatch, now: list[float], opener):
    """A Router over the plans' registry (16 examples: a quick training; no model file needed), its retry clock
    FAKE (`now[0]`), its embedder opened by `opener`."""
    from swarm_edge import router_host
    from swarm_edge.registry import load_registry
    from swarm_edge.router_host import Router
    from tests.conftest import registry_yaml

    monkeypatch.setattr(router_host, "_now", lambda: now[0])  # FAKE clock (the retry clock only)
    config = tmp_path / "models.yaml"
    config.write_text(registry_yaml({"smollm2-135m": {"model": "/nowhere/a.gguf"},
                                     "minilm-l6": {"model": "/nowhere/m.onnx", "tokenizer": "/nowhere/t.json"}},
                                    swarm=True))
    router = Router(load_registry(config), lambda mid: {}, cache_dir=tmp_path / "cache")
    router.opener = opener
    return router


def test_a_head_the_routers_worker_refused_is_tried_again_later_not_never(tmp_path, monkeypatch):
    """The router's worker refusing the head it was sent (an InferenceError from load_head, after a training)
    turned semantic routing off until restart. Now the rules route for a while (30 s, doubled after each failure
    in a row), then a thread of its own builds the router again, from the head cached by the training, while the
    request that found the wait over is routed by the rules at once."""
    now = [1000.0]
    refusals = [1, 2, 0]  # the first: the trained head; the second: the cached head and the one trained again
    backends: list[_RefusingRemote] = []
    router = _plans_router(tmp_path, monkeypatch, now, lambda spec, files, threads:
                           backends.append(_RefusingRemote(refusals[len(backends)])) or backends[-1])

    router.warm()  # trains (cached), then the worker refuses the head
    assert router.unavailable is None and backends[0].closed and backends[0].heads == 1
    r = router.route("Rewrite this more politely: give me the file.")
    assert "tried again in 30 s" in r.reason and not router.loaded and len(backends) == 1
    now[0] += 31
    gate = threading.Event()
    opener = router.opener
    router.opener = lambda *a: gate.wait(30) and opener(*a)  # type: ignore[misc]  # the retry waits for the gate
    held: list[str] = []
    entered = threading.Event()

    @contextlib.contextmanager
    def awake():  # the daemon's Sleeper.route: the daemon stays awake while the retry loads
        held.append("in")
        entered.set()
        yield
        held.append("out")

    router.awake = awake
    r = router.route("Rewrite this more politely: give me the file.")  # the rules at once; the retry goes on
    assert "keyword rules while it is tried again" in r.reason and len(backends) == 1, r.reason
    assert router._retry is not None and router._retry.name == "router-retry"
    assert entered.wait(30) and held == ["in"]
    gate.set()
    router._retry.join(30)
    assert held == ["in", "out"]
    r = router.route("Rewrite this more politely: give me the file.")  # refused again: the wait doubles
    assert "tried again in 60 s" in r.reason and len(backends) == 2 and backends[1].heads == 2, r.reason
    now[0] += 30
    router.route("Rewrite this more politely: give me the file.")
    assert len(backends) == 2 and not router._retry.is_alive()  # not yet
    now[0] += 31
    r = router.route("Rewrite this more politely: give me the file.")
    router._retry.join(30)
    r = router.route("Rewrite this more politely: give me the file.")
    assert r.reason.startswith("the trained head says"), r.reason
    assert router.loaded and router.kind == "semantic" and len(backends) == 3 and backends[2].heads == 1
    assert router._retries == 0 and router._later is None  # a success starts the doubling over


def test_a_thousand_refusals_in_a_row_wait_the_longest_not_overflow(tmp_path, monkeypatch):
    """Regression (a second read): the wait was RETRY_S * 2 ** failures, an OverflowError past ~1,000 failures in a
    row, raised out of the router into every route."""
    from swarm_edge import router_host

    router = _plans_router(tmp_path, monkeypatch, [1000.0], lambda spec, files, threads: _RefusingRemote(10 ** 9))
    router._retries = 1500
    router.warm()
    r = router.route("Rewrite this more politely: give me the file.")
    assert f"tried again in {router_host.RETRY_MAX_S:.0f} s" in r.reason and router._retries == 1501
