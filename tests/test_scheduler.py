"""Scheduler logic with FAKE workers (labelled: no model runs here; tests/workers/test_pool_integration.py
uses real ones). Every test runs under a hard deadline so a deadlock fails fast instead of hanging CI."""

from __future__ import annotations

import asyncio
import functools

import pytest

from swarm_edge.errors import BudgetError, BusyError, ModelLoadError
from swarm_edge.scheduler import Candidate, Scheduler, lru, plan_aware

DEADLINE = 5.0


def deadline(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), DEADLINE))
    return wrapper


class FakeWorker:
    """Stands in for a worker process: tracks whether it is alive and how much it 'measures'."""

    def __init__(self, model_id: str, pss: int = 0) -> None:
        self.model_id, self.alive, self.last_pss, self.stopped = model_id, True, pss, False
        self.pid = None  # no process behind this fake

    async def stop(self) -> None:
        await asyncio.sleep(0)
        self.alive, self.stopped = False, True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A scheduler over fake models with fixed sizes; records spawns and concurrency."""

    def __init__(self, budget=300, sizes=None, **kw) -> None:
        self.sizes = sizes or {"a": 100, "b": 100, "c": 100, "big": 1000}
        self.spawned: list[str] = []
        self.loading = 0
        self.max_loading = 0
        self.gates: dict[str, asyncio.Event] = {}
        self.fail: set[str] = set()
        self.measured: dict[str, int] = {}
        self.clock = Clock()
        self.s = Scheduler(budget, spawn=self.spawn, estimate=self.sizes.__getitem__, clock=self.clock, **kw)

    async def spawn(self, model_id: str) -> FakeWorker:
        self.loading += 1
        self.max_loading = max(self.max_loading, self.loading)
        try:
            if model_id in self.gates:
                await self.gates[model_id].wait()
            await asyncio.sleep(0.01)
            if model_id in self.fail:
                raise ModelLoadError(f"{model_id} is broken")
            self.spawned.append(model_id)
            return FakeWorker(model_id, self.measured.get(model_id, 0))
        finally:
            self.loading -= 1

    async def use(self, model_id: str, hold: float = 0.0):
        async with self.s.lease(model_id) as w:
            self.clock.now += 1
            await asyncio.sleep(hold)
            return w

    def resident(self) -> set[str]:
        return set(self.s.residents)


@deadline
async def test_load_once_then_reuse():
    h = Harness()
    w1 = await h.use("a")
    w2 = await h.use("a")
    assert w1 is w2 and h.spawned == ["a"] and h.s.stats.loads == 1


@deadline
async def test_concurrent_requests_load_a_model_exactly_once():
    h = Harness()
    workers = await asyncio.gather(*(h.use("a", 0.01) for _ in range(5)))
    assert h.spawned == ["a"] and len({id(w) for w in workers}) == 1


@deadline
async def test_lru_eviction_within_budget():
    h = Harness(budget=250)
    await h.use("a")
    await h.use("b")  # a evicted: 200 > 250 - no, 100 + 100 fits
    assert h.resident() == {"a", "b"}
    await h.use("a")  # a is now the most recent
    await h.use("c")  # needs room: b is least recently used
    assert h.resident() == {"a", "c"} and h.s.stats.evictions == 1
    assert h.s.used() <= 250


@deadline
async def test_model_in_use_is_never_evicted_and_waiters_get_room():
    h = Harness(budget=200)
    order = []

    async def hold_a():
        async with h.s.lease("a"):
            order.append("a-start")
            await asyncio.sleep(0.2)
            order.append("a-end")

    async def hold_b():
        async with h.s.lease("b"):
            await asyncio.sleep(0.3)

    ta, tb = asyncio.create_task(hold_a()), asyncio.create_task(hold_b())
    await asyncio.sleep(0.05)
    await h.use("c")  # must wait for a to finish, then evict it
    order.append("c-done")
    assert order == ["a-start", "a-end", "c-done"]
    assert "a" not in h.resident() and h.s.used() <= 200
    await asyncio.gather(ta, tb)


@deadline
async def test_pinned_model_is_never_evicted():
    h = Harness(budget=250, pins={"a"})
    await h.use("a")
    await h.use("b")
    await h.use("c")  # a is LRU but pinned: b goes
    assert h.resident() == {"a", "c"}


@deadline
async def test_too_large_is_refused_with_both_numbers():
    h = Harness(budget=300 * 2**20, sizes={"big": 1000 * 2**20})
    with pytest.raises(BudgetError, match=r"needs about 1,000 MiB but the budget is 300 MiB"):
        await h.use("big")
    assert h.spawned == [] and h.s.used() == 0


@deadline
async def test_pins_count_against_what_fits():
    h = Harness(budget=250, pins={"a", "b"}, sizes={"a": 100, "b": 100, "c": 100})
    await h.use("a")
    await h.use("b")
    with pytest.raises(BudgetError, match="pinned"):
        await h.use("c")


@deadline
async def test_bounded_queue_rejects_at_once():
    h = Harness(max_waiting=2)
    async with h.s.lease("a"):
        waiters = [asyncio.create_task(h.use("a")) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert h.s.waiting == 2
        with pytest.raises(BusyError) as info:
            await h.use("a")
        assert info.value.retry_after > 0 and h.s.stats.busy_rejections == 1
    await asyncio.gather(*waiters)
    assert h.s.waiting == 0


@deadline
async def test_one_request_at_a_time_per_model():
    h = Harness()
    active, peak = 0, 0

    async def req():
        nonlocal active, peak
        async with h.s.lease("a"):
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1

    await asyncio.gather(*(req() for _ in range(6)))
    assert peak == 1


@deadline
async def test_cancelled_lease_is_released():
    h = Harness(budget=100)
    task = asyncio.create_task(h.use("a", hold=10))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert h.s.residents["a"].refs == 0 and h.s.waiting == 0
    await h.use("b")  # a is idle again, so it can be evicted
    assert h.resident() == {"b"}


@deadline
async def test_a_requester_that_leaves_during_the_load_neither_cancels_nor_poisons_it():
    """The first requester of a model gives up while it loads (client gone, request deadline): the load goes on
    for whoever comes next, and nothing is recorded as a failure (it used to be re-raised to later requests)."""
    h = Harness()
    h.gates["a"] = asyncio.Event()
    first = asyncio.create_task(h.use("a"))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(h.use("a"))  # waits for the same load ...
    await asyncio.sleep(0.05)
    assert h.s.residents["a"].refs == 2
    first.cancel()
    second.cancel()  # ... and gives up too: its reference must go with it (it used to pin the model forever)
    for t in (first, second):
        with pytest.raises(asyncio.CancelledError):
            await t
    h.gates["a"].set()
    await asyncio.sleep(0.05)
    assert h.spawned == ["a"] and h.s.residents["a"].refs == 0 and h.s.stats.load_failures == 0
    w = await h.use("a")  # the loaded model serves the next request: no second load, no back-off error
    assert h.spawned == ["a"] and w.model_id == "a"
    await h.use("b")
    await h.use("c")
    assert h.s.residents["a"].refs == 0


@deadline
async def test_error_in_body_releases_lease():
    h = Harness(budget=100)
    with pytest.raises(RuntimeError):
        async with h.s.lease("a"):
            raise RuntimeError("client went away")
    await h.use("b")
    assert h.resident() == {"b"}


@deadline
async def test_a_death_seen_by_several_leases_counts_once():
    """Regression: every lease that found the dead worker counted a crash (three leases, one death: 3). The
    leases after the first wait for the compute slot, then find the worker dead, and take a new one."""
    h = Harness()
    held = asyncio.Event()
    died = asyncio.Event()

    async def lease() -> None:
        async with h.s.lease("a"):
            held.set()
            await died.wait()

    tasks = [asyncio.create_task(lease()) for _ in range(3)]
    await held.wait()
    await asyncio.sleep(0.01)
    assert h.s.residents["a"].refs == 3
    h.s.residents["a"].worker.alive = False  # the worker process died while three requests used it
    died.set()
    await asyncio.gather(*tasks)
    assert h.s.stats.crashes == 1, h.s.stats
    assert h.spawned == ["a", "a"]  # one reload serves the two requests that waited


@deadline
async def test_crashed_worker_frees_budget_and_reloads():
    h = Harness()
    async with h.s.lease("a") as w:
        w.alive = False  # the worker process died mid-request
    assert "a" not in h.resident() and h.s.stats.crashes == 1 and h.s.used() == 0
    w2 = await h.use("a")
    assert w2 is not w and h.spawned == ["a", "a"]


@deadline
async def test_failed_load_backs_off_and_blocks_nothing_else():
    h = Harness()
    h.fail.add("a")
    with pytest.raises(ModelLoadError, match="broken"):
        await h.use("a")
    with pytest.raises(ModelLoadError, match="next try in"):
        await h.use("a")  # inside the back-off window: no new spawn
    assert h.spawned == [] and h.s.stats.load_failures == 1
    await h.use("b")  # other models load fine meanwhile
    h.fail.clear()
    h.clock.now += 10
    await h.use("a")
    assert h.spawned == ["b", "a"] and h.s.used() == 200


@deadline
async def test_at_most_one_load_at_a_time():
    h = Harness(budget=1000)
    await asyncio.gather(h.use("a"), h.use("b"), h.use("c"))
    assert h.max_loading == 1 and sorted(h.spawned) == ["a", "b", "c"]


@deadline
async def test_resident_model_served_while_another_loads():
    h = Harness(budget=1000)
    await h.use("a")
    h.gates["b"] = asyncio.Event()
    loading_b = asyncio.create_task(h.use("b"))
    await asyncio.sleep(0.05)
    await h.use("a")  # not blocked by b's load
    assert not loading_b.done()
    h.gates["b"].set()
    await loading_b


@deadline
async def test_idle_ttl_unloads_unpinned():
    h = Harness(idle_ttl=30, pins={"a"})
    await h.use("a")
    await h.use("b")
    h.clock.now += 31
    await h.s.sweep_idle()
    assert h.resident() == {"a"} and h.s.stats.ttl_unloads == 1


@deadline
async def test_measured_above_estimate_raises_reservation_and_makes_room():
    h = Harness(budget=300)
    h.measured["a"] = 180  # the estimate said 100
    await h.use("b")
    await h.use("c")
    await h.use("a")  # fits by estimate (b + c + a = 300), then really holds 180: one idle model must go
    assert h.s.residents["a"].reserved == 180 and h.s.used() <= 300


@deadline
async def test_a_measurement_that_is_not_comparable_does_not_grow_a_reservation():
    """Dozing (idle.py), a worker alone maps the runtime's pages the forkserver shared, and the base still books
    their share: its PSS then is not what admission's figures mean, and must not evict anything."""
    h = Harness(budget=300)
    comparable = [False]
    h.s.pss_comparable = lambda: comparable[0]
    h.measured["a"] = 180  # the estimate said 100
    await h.use("b")
    await h.use("c")
    await h.use("a")
    assert h.s.residents["a"].reserved == 100 and h.resident() == {"a", "b", "c"}
    comparable[0] = True
    await h.use("a")  # awake again: the same measurement counts
    assert h.s.residents["a"].reserved == 180 and h.s.used() <= 300


def test_policies():
    cands = [Candidate("a", 1.0, 10), Candidate("b", 2.0, 10), Candidate("c", 3.0, 10)]
    assert lru(cands, [], 0) == "a"
    assert plan_aware(cands, ["a", "c"], 0) == "b"          # not needed: goes first
    assert plan_aware(cands, ["b", "a", "c"], 0) == "c"     # all needed: the furthest in the future
    assert plan_aware(cands, [], 0) == "a"                  # no plan: LRU


@deadline
async def test_plan_hint_prefetches_and_protects():
    h = Harness(budget=250)
    await h.use("a")
    await h.use("b")
    h.s.hint(["c", "a"])
    # c needs room: b is not in the plan, so b goes even though a is older
    await h.use("c")
    assert h.resident() == {"a", "c"}


@deadline
async def test_prefetch_next_model_while_current_runs():
    h = Harness(budget=300)
    h.s.hint(["a", "b"])
    async with h.s.lease("a"):
        await asyncio.sleep(0.1)  # b loads in the background meanwhile
        assert "b" in h.resident()
    assert h.s.stats.prefetches == 1
    await h.use("b")
    assert h.spawned == ["a", "b"]


@deadline
async def test_close_stops_everything():
    h = Harness()
    w = await h.use("a")
    await h.s.close()
    assert w.stopped and h.resident() == set() and h.s.used() == 0


@deadline
async def test_no_room_and_nothing_will_free_any_is_an_error_not_a_hang():
    calls = {"n": 0}

    def growing_base():  # swarm-edge's own PSS grows between the admission check and making room
        calls["n"] += 1
        return 0 if calls["n"] <= 1 else 100

    h = Harness(budget=250, pins={"a"})
    await h.use("a")
    h.s._measure_base = growing_base
    with pytest.raises(BudgetError, match="held by swarm-edge itself and pinned models"):
        await h.use("b")


@deadline
async def test_waiting_for_room_times_out_as_busy():
    h = Harness(budget=100, admission_timeout=0.2)
    async with h.s.lease("a"):
        with pytest.raises(BusyError, match="stayed in use"):
            await h.use("b")


@deadline
async def test_worker_that_died_while_idle_stops_counting():
    h = Harness(budget=200)
    wa = await h.use("a")
    await h.use("b")
    wa.alive = False  # killed while idle (OOM killer, a user's kill -9)
    await h.use("c")  # needs room: the dead one is dropped first, b (alive) stays
    assert h.resident() == {"b", "c"} and h.s.stats.crashes == 1 and h.s.stats.evictions == 0


@deadline
async def test_two_requests_while_a_dead_worker_is_swept_load_once():
    """Regression: the first request for an absent model awaited the sweep of a dead idle worker; a second request
    listed the same model meanwhile, the first overwrote it and the model loaded twice, one worker leaked."""
    h = Harness(budget=1000)
    made = []

    class SlowStop(FakeWorker):
        async def stop(self):
            await asyncio.sleep(0.05)  # a real stop joins the process in a thread: it yields
            self.alive, self.stopped = False, True

    real = h.s._spawn

    async def spawn(model_id):
        w = await real(model_id)
        w.__class__ = SlowStop
        made.append(w)
        return w

    h.s._spawn = spawn
    await h.use("b")
    h.s.residents["b"].worker.alive = False  # b's worker died while idle
    await asyncio.gather(h.use("a", 0.01), h.use("a", 0.01))
    listed = h.s.residents["a"].worker
    assert h.spawned.count("a") == 1
    assert [w for w in made if w.model_id == "a" and w.alive and w is not listed] == []


@deadline
async def test_the_base_is_measured_afresh_after_a_worker_exits():
    # FAKE base: like the engine's it keeps its reading until told a worker exited (the engine keeps one for
    # BASE_TTL_S); the true base grows by 60 when a worker's process is gone (PSS hands its share of the shared
    # pages to the processes left). Without the fresh reading, c was admitted beside b against the stale base.
    true = {"base": 0}
    kept = {"base": 0}

    def measure() -> int:
        return kept["base"]

    def exited() -> None:
        kept["base"] = true["base"]

    h = Harness(budget=250, on_exit=exited)
    h.s._measure_base = measure
    peaks: list[int] = []
    stop = FakeWorker.stop

    async def stop_and_grow(self) -> None:
        await stop(self)
        true["base"] += 60

    FakeWorker.stop = stop_and_grow   # type: ignore[method-assign]
    try:
        await h.use("a")

        async def hold_b():
            async with h.s.lease("b"):
                await asyncio.sleep(0.2)

        tb = asyncio.create_task(hold_b())
        await asyncio.sleep(0.05)

        async def watch():
            while True:
                peaks.append(true["base"] + sum(r.reserved for r in h.s.residents.values()))
                await asyncio.sleep(0.005)

        tw = asyncio.create_task(watch())
        await h.use("c")   # a is evicted (base 60): 60 + b + c > 250, so c waits for b and evicts it
        tw.cancel()
        await tb
    finally:
        FakeWorker.stop = stop   # type: ignore[method-assign]
    assert h.s.stats.evictions == 2 and h.resident() == {"c"}, (h.s.stats, h.resident())
    assert max(peaks) <= 250, max(peaks)
