"""Leases on resident models inside a memory budget.

    async with scheduler.lease("qwen2.5-coder-0.5b") as worker:
        ...  # exclusive use of the model's worker; the model cannot be evicted meanwhile

Admission happens before loading: estimate -> evict idle models (policy: plan-aware, which is LRU when
there is no plan) until the estimate fits -> load -> measure -> correct the reservation. Pinned models
are never evicted; idle models unload after a TTL; at most one load runs at a time and a model is
loaded at most once however many requests want it; waiters are bounded (overflow is BusyError at
once); a model that cannot fit even alone is BudgetError with both numbers; failed loads back off.

Side effects are injected (`spawn`, `estimate`, `measure_base`, `clock`, `policy`), so this module is
tested without models. All state below is touched only from the event loop's thread: the loop is the
lock. `_changed` is notified whenever memory is freed or a load ends, waking admission waiters.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from swarm_edge.errors import BudgetError, BusyError, ModelLoadError, SwarmEdgeError
from swarm_edge.scheduling import (  # noqa: F401  (re-exported: the policies and counters tests use)
    Candidate,
    Policy,
    State,
    Stats,
    WorkerHandle,
    lru,
    plan_aware,
)

W = TypeVar("W", bound=WorkerHandle)

MiB = 1 << 20


@dataclass
class Resident(Generic[W]):
    """A model that is loading, loaded or stopping, and the bytes it holds against the budget."""

    model_id: str
    reserved: int
    pinned: bool = False
    state: State = State.LOADING           # loading -> ready -> stopping
    worker: W | None = None                # None while loading
    refs: int = 0                          # leases holding or waiting for this model
    last_used: float = 0.0
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)   # one request at a time per context
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None
    uses: int = 0


class Scheduler(Generic[W]):
    """Leases, budget admission, eviction, TTL, pins, bounded waiting and plan hints."""

    def __init__(self, budget: int, *, spawn: Callable[[str], Awaitable[W]], estimate: Callable[[str], int],
                 measure_base: Callable[[], int] = lambda: 0, clock: Callable[[], float] = time.monotonic,
                 policy: Policy = plan_aware, max_waiting: int = 64, idle_ttl: float | None = None,
                 pins: frozenset[str] | set[str] = frozenset(), backoff: float = 2.0, max_backoff: float = 60.0,
                 on_release: Callable[[str, W], None] | None = None, admission_timeout: float = 600.0,
                 on_exit: Callable[[], None] = lambda: None) -> None:
        self.budget = budget
        self._spawn, self._estimate, self._measure_base = spawn, estimate, measure_base
        self._clock, self.policy = clock, policy
        self.max_waiting, self.idle_ttl, self.pins = max_waiting, idle_ttl, frozenset(pins)
        self._backoff, self._max_backoff = backoff, max_backoff
        self._on_release = on_release
        # A worker's process is gone: `measure_base` may keep a reading for a while (engine: BASE_TTL_S), but the
        # base has just grown (PSS moves the exited worker's share of the shared pages to the processes left), so the
        # next admission must measure it afresh or it admits against the smaller, stale figure.
        self._on_exit = on_exit
        # Whether a worker's measured PSS means what admission's figures mean (engine: not while the daemon dozes,
        # when each worker alone maps the runtime's pages that the forkserver and the spare shared, and the base
        # still books their share): a measurement that does not is neither recorded (on_release) nor used to grow
        # a reservation.
        self.pss_comparable: Callable[[], bool] = lambda: True
        self.admission_timeout = admission_timeout
        self.residents: dict[str, Resident] = {}
        self._stopping: dict[int, int] = {}     # id(resident) -> bytes still held while its worker exits
        self._changed = asyncio.Condition()
        self._load_lock = asyncio.Lock()        # at most one load at a time; never held by a lease
        self._failures: dict[str, tuple[int, float, BaseException]] = {}
        self._future: list[str] = []
        self._tasks: set[asyncio.Task] = set()
        self._ttl_task: asyncio.Task | None = None
        self.waiting = 0
        self.stats = Stats()

    # ------------------------------------------------------------ accounting

    def used(self) -> int:
        """Bytes held now: the base (daemon + forkserver) plus every reservation, stopping ones included."""
        return self._measure_base() + sum(r.reserved for r in self.residents.values()) + sum(self._stopping.values())

    def ready(self) -> list[str]:
        """The models loaded and not being loaded or stopped."""
        return [m for m, r in self.residents.items() if r.state is State.READY]

    def hint(self, upcoming: list[str]) -> None:
        """The models a plan will need next, in order: drives prefetch and furthest-future eviction."""
        self._future = list(upcoming)

    # ------------------------------------------------------------ leases

    @contextlib.asynccontextmanager
    async def lease(self, model_id: str) -> AsyncGenerator[Any, None]:
        """Exclusive use of a loaded model's worker; released on every path (error, cancellation)."""
        if self.waiting >= self.max_waiting:
            self.stats.busy_rejections += 1
            raise BusyError(f"{self.waiting} requests are already waiting; try again shortly", retry_after=1.0)
        self.waiting += 1
        counted = True
        try:
            while True:
                resident = await self._acquire(model_id)
                try:
                    async with resident.busy:
                        if not (resident.worker is None or resident.worker.alive):
                            continue  # died while we queued for it: the finally below drops it; load anew
                        self.waiting -= 1
                        counted = False
                        resident.uses += 1
                        if self._future and self._future[0] == model_id:
                            self._future.pop(0)
                        self._maybe_prefetch(model_id)
                        try:
                            yield resident.worker
                        finally:
                            resident.last_used = self._clock()
                        return
                finally:
                    resident.refs -= 1
                    # Shielded: a cancelled caller (client gone) must still free, correct and wake the waiters.
                    await asyncio.shield(self._spawn_task(self._after_use(resident)))
        finally:
            if counted:
                self.waiting -= 1

    async def _after_use(self, r: Resident) -> None:
        worker = r.worker
        if worker is not None and not worker.alive:
            await self._drop_dead(r)  # a dead worker holds no memory: free its budget, the next lease reloads
            return
        if worker is not None and self._on_release and self.pss_comparable():
            self._on_release(r.model_id, worker)
        await self._correct(r)
        async with self._changed:
            self._changed.notify_all()

    async def _acquire(self, model_id: str) -> Resident:
        while True:
            r = self.residents.get(model_id)
            if r is not None and r.state is not State.STOPPING:
                r.refs += 1
                try:
                    await r.ready.wait()
                except BaseException:  # a waiter that gives up (client gone, deadline) must not pin the model
                    r.refs -= 1
                    raise
                if r.error is not None:
                    r.refs -= 1
                    if not isinstance(r.error, Exception):  # the load was cancelled: shutting down
                        raise ModelLoadError(f"the load of {model_id} was cancelled")
                    raise r.error
                if r.worker is None or r.worker.alive:
                    return r
                r.refs -= 1
                await self._drop_dead(r)
                continue
            self._check_backoff(model_id)
            need = self._estimate(model_id)
            base = self._measure_base()
            pinned_other = self.pinned_other(model_id)
            if base + pinned_other + need > self.budget:
                raise BudgetError(
                    f"{model_id} needs about {need / MiB:,.0f} MiB but the budget is {self.budget / MiB:,.0f} MiB "
                    f"({base / MiB:,.0f} MiB taken by swarm-edge itself"
                    + (f", {pinned_other / MiB:,.0f} MiB by pinned models" if pinned_other else "") + ")",
                    needed=base + pinned_other + need, budget=self.budget)
            if not await self._make_room(need, exclude=model_id, wait=True) or model_id in self.residents:
                continue  # the world changed while we waited (maybe someone loaded our model): look again
            r = Resident(model_id, reserved=need, pinned=model_id in self.pins, last_used=self._clock(), refs=1)
            self.residents[model_id] = r
            # The load is a task of its own: a requester that gives up (client gone, deadline) does not cancel it
            # under the others waiting for the same model, nor waste it for the next request.
            load = self._spawn_task(self._load(r))
            load.add_done_callback(lambda t: t.cancelled() or t.exception())  # raised to the waiters instead
            try:
                await asyncio.shield(load)
            except asyncio.CancelledError:
                if not load.done():
                    load.add_done_callback(functools.partial(self._unref_later, r))
                else:
                    r.refs -= 1
                raise
            except BaseException:
                r.refs -= 1
                raise
            return r

    def _unref_later(self, r: Resident, _done: object) -> None:
        self._spawn_task(self._unref(r))

    async def _unref(self, r: Resident) -> None:
        """Drop the reference of a requester that left while its load went on."""
        r.refs -= 1
        async with self._changed:
            self._changed.notify_all()

    async def _load(self, r: Resident) -> None:
        try:
            async with self._load_lock:
                r.worker = await self._spawn(r.model_id)
        except BaseException as exc:
            if isinstance(exc, Exception):  # a cancelled load (shutdown) is not the model's failure: no back-off
                self.stats.load_failures += 1
                count = self._failures.get(r.model_id, (0, 0.0, exc))[0] + 1
                self._failures[r.model_id] = (count, self._clock(), exc)
            r.error = exc
            self.residents.pop(r.model_id, None)
            self._on_exit()  # the half-loaded worker (the spare it took) was killed
            r.ready.set()
            async with self._changed:
                self._changed.notify_all()
            raise
        self._failures.pop(r.model_id, None)
        self.stats.loads += 1
        r.state = State.READY
        r.ready.set()
        await self._correct(r)
        async with self._changed:
            self._changed.notify_all()

    async def _correct(self, r: Resident) -> None:
        """If the worker measures more than was reserved, hold what it really uses and evict idle models to
        get back under the budget."""
        measured = (r.worker.last_pss if r.worker is not None else 0) or 0
        if measured > r.reserved and self.pss_comparable():
            r.reserved = measured
        if self.used() > self.budget:  # a worker grew, or the base did: give idle models back
            await self._make_room(0, exclude=r.model_id, wait=False)

    def _check_backoff(self, model_id: str) -> None:
        if model_id not in self._failures:
            return
        count, when, exc = self._failures[model_id]
        wait = min(self._max_backoff, self._backoff * 2 ** (count - 1))
        left = when + wait - self._clock()
        if left > 0:
            if isinstance(exc, SwarmEdgeError):
                raise type(exc)(f"{exc} (failed {count}x; next try in {left:.1f} s)") from exc
            raise exc

    # ------------------------------------------------------------ making room

    def _candidates(self, exclude: str) -> list[Candidate]:
        return [Candidate(r.model_id, r.last_used, r.reserved) for r in self.residents.values()
                if r.state is State.READY and r.refs == 0 and not r.pinned and r.model_id != exclude]

    async def _make_room(self, need: int, *, exclude: str, wait: bool) -> bool:
        """Evict idle models until `need` more bytes fit: True once they do. With `wait`, sleep until memory is
        freed when nothing is evictable and return False, so the caller looks at the world again."""
        for r in [r for r in self.residents.values() if r.state is State.READY and r.refs == 0
                  and not (r.worker is None or r.worker.alive)]:
            await self._drop_dead(r)  # died while idle: its memory is already back, stop counting it
        while self.used() + need > self.budget:
            cands = self._candidates(exclude)
            if cands:
                await self._evict(self.residents[self.policy(cands, self._future, self._clock())])
                continue
            if not wait:
                return False
            busy = any(r.refs > 0 or r.state is State.LOADING for r in self.residents.values()) or self._stopping
            if not busy:  # nothing in use, loading or exiting: waiting would never end
                raise BudgetError(
                    f"{exclude} needs about {need / MiB:,.0f} MiB; {self.used() / MiB:,.0f} MiB of the "
                    f"{self.budget / MiB:,.0f} MiB budget is held by swarm-edge itself and pinned models",
                    needed=self.used() + need, budget=self.budget)
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), self.admission_timeout)
                except asyncio.TimeoutError:
                    self.stats.busy_rejections += 1
                    raise BusyError(f"no room for {exclude} within {self.admission_timeout:.0f} s: every "
                                    "resident model stayed in use", retry_after=5.0) from None
            return False
        return True

    async def _evict(self, r: Resident, *, ttl: bool = False) -> None:
        self.stats.evictions += 0 if ttl else 1
        self.stats.ttl_unloads += 1 if ttl else 0
        await self._drop(r)

    async def _drop_dead(self, r: Resident) -> None:
        """Drop a resident whose worker died, counting the death once: several leases (and the sweep in
        _make_room) may find the same dead worker, and only the first still finds it listed."""
        if self.residents.get(r.model_id) is not r:
            return  # dropped already by whoever found it first (its bytes count in _stopping until it is gone)
        self.stats.crashes += 1
        await self._drop(r)

    async def _drop(self, r: Resident) -> None:
        """Remove a resident and wait for its worker to exit; its bytes count until the process is gone."""
        if self.residents.get(r.model_id) is r:
            del self.residents[r.model_id]
        r.state = State.STOPPING
        self._stopping[id(r)] = r.reserved
        try:
            if r.worker is not None:
                await r.worker.stop()
        finally:
            self._stopping.pop(id(r), None)
            self._on_exit()
            async with self._changed:
                self._changed.notify_all()

    # ------------------------------------------------------------ prefetch, TTL, shutdown

    def _maybe_prefetch(self, current: str) -> None:
        nxt = next((m for m in self._future if m != current), None)
        if nxt is None or nxt in self.residents or self._load_lock.locked():
            return
        try:
            need = self._estimate(nxt)
        except SwarmEdgeError:
            return
        if self.used() + need <= self.budget:  # only free memory: a prefetch never evicts
            self.stats.prefetches += 1
            self._spawn_task(self._prefetch(nxt))

    async def _prefetch(self, model_id: str) -> None:
        with contextlib.suppress(SwarmEdgeError, asyncio.CancelledError):
            async with self.lease(model_id):
                pass

    def _spawn_task(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def start_ttl(self) -> None:
        """Start the idle-TTL sweeper (if a TTL is set)."""
        if self.idle_ttl and self._ttl_task is None:
            self._ttl_task = asyncio.get_running_loop().create_task(self._ttl_loop())

    async def _ttl_loop(self) -> None:
        period = max(0.05, min(5.0, (self.idle_ttl or 0.0) / 4))
        while True:
            await asyncio.sleep(period)
            await self.sweep_idle()

    async def sweep_idle(self) -> None:
        """Unload unpinned models that have been idle for longer than the TTL."""
        if not self.idle_ttl:
            return
        now = self._clock()
        for c in self._candidates(exclude=""):
            if now - c.last_used >= self.idle_ttl and c.model_id in self.residents:
                await self._evict(self.residents[c.model_id], ttl=True)

    async def close(self) -> None:
        """Stop every worker and background task."""
        if self._ttl_task:
            self._ttl_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        for r in list(self.residents.values()):
            await self._drop(r)

    def pinned_other(self, model_id: str) -> int:
        """Bytes held by pinned models other than `model_id`: never evicted to make room for it."""
        return sum(x.reserved for x in list(self.residents.values()) if x.pinned and x.model_id != model_id)

    def snapshot(self) -> dict[str, Any]:
        """Plain-data view for status output."""
        return {
            "budget": self.budget, "used": self.used(), "base": self._measure_base(), "waiting": self.waiting,
            "residents": [{"model": r.model_id, "state": r.state, "reserved": r.reserved, "pinned": r.pinned,
                           "in_use": r.refs, "uses": r.uses,
                           "pss": r.worker.last_pss if r.worker is not None else None,
                           "pid": r.worker.pid if r.worker is not None else None}
                          for r in self.residents.values()],
            "stats": vars(self.stats).copy(),
        }
