"""The daemon's sleep (idle.py) against FAKE worker processes: the real Sleeper and Pool, with forks, workers and
the forkserver's stop replaced, so the races a second read found are replayed deterministically."""

from __future__ import annotations

import asyncio
import time

import pytest

import swarm_edge.workers.pool as pool_module
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
