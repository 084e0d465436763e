"""Worker processes: one OS process per resident model, forked from a forkserver with the runtimes preloaded.

Why a process per model: a native crash on a bad file costs one worker, not the daemon; unloading is the
process exiting, so memory really returns; PSS is measured per process; and the daemon never shares an
address space with code that parses untrusted model files. Messages are JSON frames over a
multiprocessing pipe, both ways: the daemon never unpickles anything a worker sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import Any

from swarm_edge.errors import ModelLoadError
from swarm_edge.workers.child import Child
from swarm_edge.workers.process import (  # noqa: F401
    EMBED_FRAME,
    MAX_FRAME,
    _decode,
    _send,
    _serve,
    _slices,
    adopt_orphans,
    worker_main,
)
from swarm_edge.workers.worker import (  # noqa: F401
    LOAD_TIMEOUT_S,
    STOP_TIMEOUT_S,
    Worker,
    _stopped_or_idle,
    off_loop,
    stall_windows,
)

log = logging.getLogger("swarm_edge.pool")

PRELOAD = ["swarm_edge.workers.preload"]
HELLO_TIMEOUT_S = 60.0  # a new worker's first frame (its pid), after the fork (and the forkserver's start)


def _usable(spare: tuple[Any, Any]) -> bool:
    """Whether the spare can take a load: alive and not stopped (a SIGSTOPped spare would hold the load for
    LOAD_TIMEOUT_S). One that cannot is killed, and the load forks a new one."""
    process, parent = spare
    if process.is_alive() and _stopped_or_idle(process.pid, None)[0] is None:
        return True
    log.warning("the spare worker (pid %s) is dead or stopped; forking a new one", process.pid)
    process.kill()
    parent.close()
    return False


class _NotAdopted(ModelLoadError):
    """A worker that left the forkserver was not handed to this process (process.py `_hello`)."""


def _frame(conn) -> dict:
    """A new worker's next frame (its process's first steps: process.py `_hello`); ModelLoadError if none."""
    try:
        if not conn.poll(HELLO_TIMEOUT_S):
            raise ModelLoadError(f"a new worker process did not start within {HELLO_TIMEOUT_S:.0f} s")
        msg = json.loads(conn.recv_bytes())
    except (EOFError, OSError, ValueError) as exc:
        raise ModelLoadError(f"a new worker process did not start: {type(exc).__name__}: {exc}") from None
    if not isinstance(msg, dict):
        raise ModelLoadError("a new worker process sent something else than its pid")
    return msg


def _pid_of(msg: dict, kind: str) -> int:
    pid = msg.get("pid")
    if msg.get("kind") != kind or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1 \
            or pid == os.getpid():
        raise ModelLoadError(f"a new worker process sent {str(msg)[:80]!r}, not its {kind!r} pid")
    return pid


def _stop_forkserver() -> None:
    """Stop multiprocessing's forkserver, then its resource tracker (workers hold neither's pipe: process.py
    `_drop_inherited_ends`); the next fork starts both again. `_stop` is private on both (CPython's tests use
    it; 3.8 to 3.13 have it): without it they simply stay."""
    from multiprocessing import forkserver, resource_tracker

    for server in (forkserver._forkserver, resource_tracker._resource_tracker):
        stop = getattr(server, "_stop", None)
        if stop is None:
            return
        try:
            stop()
        except (OSError, ChildProcessError):
            log.warning("could not stop %s", type(server).__name__, exc_info=True)
            return


class _Adopting:
    """The process-wide count of forks that need this process to be a child subreaper (the flag is the process's,
    not a pool's): on with the first, off after the last (forks on two threads, or of two pools: until all end)."""

    lock = threading.Lock()
    count = 0

    @classmethod
    def probe(cls) -> bool:
        """Whether the kernel lets this process adopt its workers (the flag left as it was)."""
        with cls.lock:
            return cls.count > 0 or (adopt_orphans() and adopt_orphans(False))

    @classmethod
    @contextlib.contextmanager
    def during(cls, adopted: bool):
        """A child subreaper while the block runs (a worker's fork, the forkserver's start), if `adopted`."""
        if not adopted:
            yield
            return
        with cls.lock:
            cls.count += 1
            if cls.count == 1:
                adopt_orphans()
        try:
            yield
        finally:
            with cls.lock:
                cls.count -= 1
                if cls.count == 0:
                    adopt_orphans(False)


class Pool:
    """Starts workers from a forkserver that has already imported llama_cpp (preload.py).

    One spare worker process is kept forked and waiting, so a load does not wait for the fork and the
    child's start-up either: it only sends the spare its model.

    Workers leave the forkserver as they start and become this process's own children (it is a child subreaper:
    child.py), so the forkserver and the spare can stop while models are resident (`sleep`, idle.py's doze).
    Where the kernel refuses that (not Linux), workers stay the forkserver's children and die with it.
    """

    def __init__(self, preload: list[str] | None = None, spare: bool = True) -> None:
        self._ctx = multiprocessing.get_context("forkserver")
        self.preload = PRELOAD if preload is None else preload
        self.spawned = 0
        self._want_spare = spare
        self._spare: tuple[Any, Any] | None = None    # (process, parent end of its pipe)
        self._refill: asyncio.Task | None = None
        self._forking = 0   # spawns and spare forks in flight (event loop only): the forkserver never stops under one
        self.closed = False  # close(final=True): the engine is stopping; nothing is forked any more
        self.stall = stall_windows()                   # a bad SWARM_EDGE_WORKER_STALL_S fails here, at start-up
        # workers are this process's children (not the forkserver's) where the kernel can: a child subreaper, only
        # while a worker is being forked (_Adopting); the probe leaves it off
        self.adopted = _Adopting.probe()
        self._children: dict[int, Child] = {}          # every worker forked and not yet reaped, by pid
        self._server_lock = threading.Lock()           # a fork's start and the forkserver's stop, never both
        self.daemon_pid: int | None = None             # the parent workers expect (tests: another; None: this one)

    def start_server(self) -> None:
        """Start the forkserver now (it imports the runtimes once), so the first load does not pay for it."""
        from multiprocessing import forkserver

        self._configure()
        # started as a subreaper's descendant: before Linux 4.11 only a process forked then looks for one when orphaned
        with _Adopting.during(self.adopted):
            forkserver.ensure_running()

    def _configure(self) -> None:
        # The forkserver is one per process (multiprocessing's): what it preloads is set here, where it may start,
        # not when a Pool is built (it only takes effect if the server is not running yet)
        self._ctx.set_forkserver_preload(self.preload)

    def _fork(self) -> tuple[Any, Any]:
        """A new worker, once it said hello (its pid): a Child if it left the forkserver, else multiprocessing's
        handle. ModelLoadError if it does not start. Where the kernel did not hand an adopted worker to this
        process after all, workers stay the forkserver's from then on."""
        try:
            return self._fork_once()
        except _NotAdopted as exc:
            log.warning("a worker could not leave the forkserver (%s); workers stay its children", exc)
            self.adopted = False
            return self._fork_once()

    def _fork_once(self) -> tuple[Any, Any]:
        self._configure()
        parent, child = self._ctx.Pipe(duplex=True)
        adopted = self.adopted
        daemon = (self.daemon_pid or os.getpid()) if adopted else None
        process = self._ctx.Process(target=worker_main, name="swarm-edge-worker", args=(child, daemon), daemon=True)
        with _Adopting.during(adopted):
            return self._forked(process, parent, child, adopted)

    def _forked(self, process, parent, child, adopted: bool) -> tuple[Any, Any]:
        """_fork_once's rest: the worker started, named (adopted: by the middle process) and greeted."""
        try:
            with self._server_lock:  # never beside _stop_forkserver (a doze on the other process thread)
                process.start()
        except Exception as exc:  # the forkserver could not be started or reached: a failed load, not a 500
            parent.close()
            raise ModelLoadError(f"could not start a worker process: {type(exc).__name__}: {exc}") from None
        finally:
            child.close()
        worker = None
        try:
            if adopted:  # the middle process names the worker first, so it is reaped however this ends
                worker = _pid_of(_frame(parent), "forked")
            hello = _frame(parent)
            if hello.get("kind") == "not_adopted":
                raise _NotAdopted(f"its parent is pid {hello.get('ppid')}, not this process")
            pid = _pid_of(hello, "hello")
            if worker is not None and pid != worker:
                raise ModelLoadError(f"a new worker said hello as pid {pid}, not {worker}")
        except (ModelLoadError, _NotAdopted):
            parent.close()  # a worker that starts after all sees EOF and exits
            process.kill()
            if worker is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker, signal.SIGKILL)  # its pid is ours until reaped: no stranger's
            process.join(STOP_TIMEOUT_S)  # the middle: once it is gone the worker is this process's child
            if worker is not None:
                Child(worker).join(STOP_TIMEOUT_S)  # reap it
            raise
        if not adopted:
            return process, parent
        process.join(STOP_TIMEOUT_S)  # the middle process, which exited for the worker to leave the forkserver
        handle = self._children[pid] = Child(pid)
        return handle, parent

    def pids(self) -> set[int]:
        """Every worker of this pool not reaped yet (resident, spare, the router's embedder, exiting)."""
        for pid, child in list(self._children.items()):
            if not child.is_alive() and self._children.get(pid) is child:  # reaped (a reused pid is another's)
                del self._children[pid]
        return set(self._children)

    async def prepare_spare(self) -> None:
        """Fork the spare worker now (idempotent)."""
        if self._want_spare and not self.closed and (self._spare is None or not self._spare[0].is_alive()):
            self._forking += 1
            try:
                self._spare = await off_loop(self._fork)
            finally:
                self._forking -= 1

    @property
    def wants_spare(self) -> bool:
        """Whether this pool keeps a spare worker forked."""
        return self._want_spare

    def spare_pid(self) -> int | None:
        """Process id of the waiting spare, if there is one."""
        return self._spare[0].pid if self._spare is not None else None

    async def spawn(self, model_id: str, fmt: str, model_path: str, options: dict[str, Any], *,
                    calibrate: bool = False, timeout: float = LOAD_TIMEOUT_S) -> Worker:
        """Give a worker process (the spare, or a new one) a model to load; return it once it is ready."""
        if self.closed:  # a late caller (a routing thread's embedder) while the engine stops: no orphan worker
            raise ModelLoadError(f"{model_id}: not loaded, the engine is stopping")
        t0 = time.perf_counter()
        self._forking += 1
        try:
            return await self._spawn(t0, model_id, fmt, model_path, options, calibrate, timeout)
        finally:
            self._forking -= 1

    async def _spawn(self, t0: float, model_id: str, fmt: str, model_path: str, options: dict[str, Any],
                     calibrate: bool, timeout: float) -> Worker:
        if self._refill is not None:
            # a failed refill (e.g. no descriptor left to fork with) must not fail every later load: fork anew below
            refill, self._refill = self._refill, None
            await asyncio.gather(refill, return_exceptions=True)
        spare, self._spare = self._spare, None
        if spare is not None and _usable(spare):
            process, parent = spare
        else:
            process, parent = await off_loop(self._fork)
        self.spawned += 1
        worker = Worker(model_id, process, parent, asyncio.get_running_loop(), self.stall)
        worker.order_load(fmt, model_path, options, calibrate=calibrate)
        try:
            await worker.wait_ready(timeout)
        except asyncio.CancelledError:
            worker.kill()  # nobody will own this half-loaded process: it must not keep its memory
            raise
        finally:
            if self._want_spare and not self.closed:  # the next spare after the load, so it does not compete with it
                self._refill = asyncio.get_running_loop().create_task(self.prepare_spare())
        worker.info["spawn_to_ready_s"] = time.perf_counter() - t0
        return worker

    def server_up(self) -> bool:
        """Whether the forkserver is running now (not merely about to start)."""
        from multiprocessing import forkserver

        return getattr(forkserver._forkserver, "_forkserver_pid", None) is not None

    @property
    def running(self) -> bool:
        """Whether anything of the pool is up: the spare, a fork in flight, or the forkserver."""
        from multiprocessing import forkserver

        return (self._spare is not None or self._refill is not None or self._forking > 0
                or getattr(forkserver._forkserver, "_forkserver_pid", None) is not None)

    def wake(self) -> None:
        """Start the forkserver and fork the spare in the background (a lazy start, or after sleep()); a load
        that comes meanwhile waits for that spare instead of forking its own. Event loop only."""
        if self._want_spare and not self.closed and self._refill is None and self._spare is None:
            self._refill = asyncio.get_running_loop().create_task(self._start_and_fork())

    async def _start_and_fork(self) -> None:
        await off_loop(self.start_server)
        await self.prepare_spare()

    async def sleep(self, still_idle=lambda: True) -> bool:
        """Stop the spare, then the forkserver: only if `still_idle()` and no fork is in flight. The caller makes
        sure no worker is alive unless `adopted` (each would die with the forkserver): idle.py. The next fork starts
        it again. Returns whether it stopped."""
        if not still_idle():
            return False  # woken already: keep the spare a wake may just have forked
        await self.close()
        if not still_idle() or self._forking or self._refill is not None or self._spare is not None:
            if self._want_spare and not self.closed and self._refill is None and self._spare is None:
                # a request came while the spare stopped: fork it again, as a wake would
                self._refill = asyncio.get_running_loop().create_task(self.prepare_spare())
            return False
        await off_loop(self._stop_server)
        return not self._forking

    def _stop_server(self) -> None:
        with self._server_lock:
            _stop_forkserver()

    async def close(self, *, final: bool = False) -> None:
        """Stop the spare (workers are stopped by their owners). `final`: for good (the engine is stopping); a spawn
        that comes later is refused rather than leaving a worker nobody stops."""
        self.closed = self.closed or final
        if self._refill is not None:
            await asyncio.gather(self._refill, return_exceptions=True)
            self._refill = None
        spare, self._spare = self._spare, None
        if spare is not None:
            process, parent = spare
            parent.close()  # the spare sees EOF and exits
            await off_loop(process.join, STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
