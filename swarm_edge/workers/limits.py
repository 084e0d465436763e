"""The time limits of worker processes (the stall windows, the load and stop timeouts) and the threads their
forks and joins run on: what the daemon's Worker handle and the Pool share."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os

from swarm_edge.errors import ConfigError

# Forks, joins and the forkserver's start and stop run on threads of their own, never on the default executor that
# routing threads use: routes waiting for the router's embedder to reload (a fork) must not take every thread the
# fork needs (a deadlock until the embedder's call timed out, found by a second read).
PROCESS_THREADS = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="swarm-edge-process")


async def off_loop(fn, *args):
    """Run a blocking process operation on PROCESS_THREADS."""
    return await asyncio.get_running_loop().run_in_executor(PROCESS_THREADS, fn, *args)

LOAD_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 10.0
# A generation's (or an embedding's) first message may take STALL_FIRST_S (prompt evaluation: a long prompt on a
# slow CPU), each later one STALL_NEXT_S. A worker silent for longer is looked at: stopped (SIGSTOP, a debugger),
# it is declared hung and killed at once; blocked (no CPU used since the last look), one window later; computing,
# it gets another window (a generation's request deadline bounds it). SWARM_EDGE_WORKER_STALL_S="FIRST,NEXT" (or
# one number for both) overrides them, e.g. for tests.
STALL_FIRST_S = 30.0
STALL_NEXT_S = 15.0
STALL_ENV = "SWARM_EDGE_WORKER_STALL_S"


def stall_windows(env: dict[str, str] | None = None) -> tuple[float, float]:
    """(first, next) stall windows in seconds: STALL_FIRST_S and STALL_NEXT_S, or SWARM_EDGE_WORKER_STALL_S."""
    raw = (os.environ if env is None else env).get(STALL_ENV, "").strip()
    if not raw:
        return STALL_FIRST_S, STALL_NEXT_S
    try:
        values = [float(part) for part in raw.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(0 < v < float("inf") for v in values):
        raise ConfigError(f"{STALL_ENV}={raw!r}: expected seconds for the first message and, optionally, each "
                          "later one, e.g. \"30,15\" or \"20\"")
    return values[0], values[-1]


def _stopped_or_idle(pid: int, cpu_before: float | None) -> tuple[str | None, float | None]:
    """Why a silent worker is hung ("...stopped", "...no CPU" since `cpu_before`), else None; and its CPU seconds."""
    import psutil

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            status, times = proc.status(), proc.cpu_times()
    except psutil.Error:  # gone (its pipe's EOF tells the rest) or unreadable: nothing to say it is computing
        return "its process could not be inspected", None
    cpu = times.user + times.system
    if status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
        return "its process is stopped", cpu
    if cpu_before is not None and cpu <= cpu_before:
        return "it used no CPU meanwhile", cpu
    return None, cpu
