"""The daemon asleep: what it gives back when nobody is using it, and how the next request wakes it.

A daemon that waits for requests needs none of: the forkserver with the runtimes preloaded, the spare worker
forked from it, or the router's embedding model (onnxruntime turns the int8 MiniLM into ~110 MiB of float weights
at session start). Together they are ~250 MiB of a 345 MiB idle tree. So when no model is resident, no request is
in flight and nothing has happened for `after` seconds, the Sleeper stops the spare and the forkserver, unloads
the embedder and hands the freed heap back to the system (boxmem.give_back). The daemon starts asleep too.

The next request wakes it: the forkserver and the spare start in the background as soon as it arrives (while it
is routed), and the embedder loads again (its trained head is kept, so no training). Measured in
benchmarks/bench_idle.py: what the first request after sleep pays, and the tree's PSS asleep.

With models resident the daemon dozes instead: after `after` seconds with nothing in flight it stops the spare and
the forkserver (and the resource tracker): ~64 MiB of a tree with the 0.5B loaded (benchmarks/bench_peer.py). The
resident workers stay: they are the daemon's own children, not the forkserver's (workers/child.py). A request for
a resident model does not wake them; the next load starts the forkserver again (and pays for its start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator

from swarm_edge.boxmem import give_back

log = logging.getLogger("swarm_edge.idle")

SLEEP_AFTER_S = 10.0
SLEEP_ENV = "SWARM_EDGE_SLEEP_S"  # seconds idle before sleeping, or "never"


def sleep_after(env) -> float | None:
    """SLEEP_AFTER_S, or SWARM_EDGE_SLEEP_S (seconds, or "never": None)."""
    from swarm_edge.errors import ConfigError

    raw = (env.get(SLEEP_ENV) or "").strip().lower()
    if not raw:
        return SLEEP_AFTER_S
    if raw == "never":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ConfigError(f"{SLEEP_ENV}={raw!r}: expected seconds (e.g. 10) or \"never\"")
    return value


class Sleeper:
    """Puts the engine's pool and router to sleep when idle; wakes them for the next request."""

    def __init__(self, pool, router, scheduler, after: float | None = SLEEP_AFTER_S, on_sleep=None) -> None:
        self.pool, self.router, self.scheduler, self.after = pool, router, scheduler, after
        self.on_sleep = on_sleep         # called once asleep (the engine forgets the bases it measured awake)
        self.active = 0                  # model sessions in flight (event loop)
        self.routing = 0                 # routes in flight (routing threads; under _lock)
        self._lock = threading.Lock()
        self.epoch = 0                   # bumped by every wake(): a sleep that sees it change gives up
        self.last = time.monotonic()     # when the last session or route ended (or started)
        self.asleep = False
        self.sleeps = 0
        self.dozes = 0
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, asleep: bool) -> None:
        """Watch for idleness from now on; `asleep`: the pool has not been started."""
        self._loop = asyncio.get_running_loop()
        self.asleep = asleep
        self._task = self._loop.create_task(self._watch())

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """A model session: the daemon is awake while it lasts (event loop only)."""
        self.active += 1
        self.wake()
        try:
            yield
        finally:
            self.active -= 1
            self.last = time.monotonic()

    @contextlib.contextmanager
    def route(self) -> Iterator[None]:
        """A route (any thread): awake while it runs; asleep, the forkserver starts meanwhile."""
        with self._lock:
            self.routing += 1
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to wake
                self._loop.call_soon_threadsafe(self.wake)
        try:
            yield
        finally:
            with self._lock:
                self.routing -= 1
            self.last = time.monotonic()

    def wake(self) -> None:
        """Start the forkserver and the spare in the background if asleep (event loop only)."""
        self.last = time.monotonic()
        self.epoch += 1
        if self.asleep:
            self.asleep = False
            self.pool.wake()

    def quiet(self) -> bool:
        """Nothing resident, loading, waiting, running or being routed."""
        return not (self.active or self.routing or self.scheduler.residents or self.scheduler.waiting)

    def idle(self) -> bool:
        """Whether now is the time to sleep: quiet for `after` seconds, and something to give back (or not
        asleep yet: a dozing daemon whose last model was unloaded)."""
        return (self.after is not None and self.quiet() and time.monotonic() - self.last >= self.after
                and (self.router.loaded or self.pool.running or not self.asleep))

    def _still(self) -> bool:
        """Nothing in flight that may load a model: no session, route or waiting request."""
        return not (self.active or self.routing or self.scheduler.waiting)

    @property
    def dozing(self) -> bool:
        """Models resident, the forkserver and the spare stopped (until the next load)."""
        return not self.asleep and bool(self.scheduler.residents) and not self.pool.running

    def dozy(self) -> bool:
        """Whether now is the time to doze: models resident (their workers the daemon's own children), nothing
        in flight for `after` seconds, and the forkserver up."""
        return (self.after is not None and getattr(self.pool, "adopted", False) and self.pool.running
                and bool(self.scheduler.residents) and self._still() and time.monotonic() - self.last >= self.after)

    async def doze(self) -> bool:
        """Stop the spare and the forkserver under resident models; give up if a request comes meanwhile."""
        epoch = self.epoch

        def still() -> bool:
            return self.epoch == epoch and self._still()

        if not await self.pool.sleep(still):
            return False
        self.dozes += 1
        await asyncio.to_thread(give_back)
        log.info("dozing: nothing for %.0f s; forkserver and spare stopped under %d resident model(s)",
                 self.after or 0, len(self.scheduler.residents))
        return True

    async def sleep(self) -> bool:
        """Unload the embedder, stop the spare and the forkserver, give the heap back; give up (and stay awake)
        as soon as a request comes meanwhile. Returns whether it is asleep."""
        epoch = self.epoch
        self.asleep = True

        def still() -> bool:
            return self.epoch == epoch and self.quiet()

        await asyncio.to_thread(self.router.drop)  # first: the embedder's worker, then the pool
        if not still() or not await self.pool.sleep(still):
            if self.epoch == epoch:   # not woken (wake() clears it): something else keeps the pool up
                self.asleep = False
            return False
        if self.on_sleep is not None:
            self.on_sleep()
        await asyncio.to_thread(give_back)
        self.sleeps += 1
        log.info("asleep: nothing for %.0f s; forkserver, spare and router embedder given back", self.after or 0)
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, min(1.0, (self.after or 4.0) / 4)))
            try:
                if self.idle():
                    await self.sleep()
                elif self.dozy():
                    await self.doze()
            except Exception:  # noqa: BLE001 - a failed sleep costs memory, never the daemon
                log.warning("could not go to sleep", exc_info=True)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
