"""The worker process's side: load a backend, then answer generate / embed / cancel / stop orders, as JSON frames
over a pipe (the daemon never unpickles anything a worker sends)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import struct
import sys
import time
from multiprocessing import reduction
from typing import Any

from swarm_edge.errors import InferenceError, SwarmEdgeError
from swarm_edge.workers.base import GenerateRequest
from swarm_edge.workers.direct import Orders, Writer, receive_sink, take_sink

log = logging.getLogger("swarm_edge.pool")

MAX_FRAME = 64 << 20          # a worker may not send more than this in one message
EMBED_FRAME = 1 << 20         # vectors go in slices of about this much JSON: 2048 x 1536 floats are ~70 MB, and
                              # the event loop decodes each frame at once (~50 ms per MiB on a small machine)
_FLOAT_JSON = 26              # the longest float JSON writes ("-2.2250738585072014e-308") and its ", "
_HEADER = struct.Struct("!i")
TICK_S = 5.0                  # a direct generation's worker sends a frame at least this often (the stall watchdog)


_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36
WORKER_NAME = "swarm-edge-wkr"  # what ps and top show for a worker (the kernel keeps 15 bytes)


PSS_REFRESH_S = 30.0   # a worker's end-of-request PSS is read from smaps_rollup again after this long at the latest
RSS_SLACK = 1 << 20    # ... or once its peak RSS grew by more than this since
_last_pss: list = []  # [peak RSS, value, when] of the last smaps_rollup reading (_pss(fresh=False))


def _pss(fresh: bool = True) -> int:
    """This process's peak proportional set size in bytes, as far as it can be known (0 if unreadable).

    Current PSS, plus what was freed since the high-water mark (peak RSS - current RSS): onnxruntime's
    activations are gone by the time a request ends, but they were there, and the budget must cover them.
    smaps_rollup makes the kernel walk every page (12.6 ms for the 1.5B's worker, 7 ms for the 0.5B's, measured):
    at the end of a request (`fresh=False`) the last value stands, plus what the peak RSS grew by, while that is no
    more than RSS_SLACK and for up to PSS_REFRESH_S (memory freed and taken again moves PSS and RSS alike and leaves
    the sum as it was; only the split of pages shared with other processes can move it meanwhile).
    """
    import resource

    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    now = time.monotonic()
    if not fresh and _last_pss and peak_rss - _last_pss[0] <= RSS_SLACK and now - _last_pss[2] < PSS_REFRESH_S:
        return _last_pss[1] + peak_rss - _last_pss[0]  # a peak a few pages higher: as many bytes more
    pss = rss = 0
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
    except OSError:
        return 0
    value = pss + max(0, peak_rss - rss)
    _last_pss[:] = [peak_rss, value, now]
    return value


def _send(conn, kind: str, **data: Any) -> None:
    frame = json.dumps({"kind": kind, **data}).encode()
    if len(frame) > MAX_FRAME:  # the daemon would take it for a broken worker and kill it: fail the request only
        raise InferenceError(f"a {kind!r} message of {len(frame):,} bytes is over the {MAX_FRAME:,}-byte frame limit")
    conn.send_bytes(frame)


def _slices(vectors: list[list[float]]) -> list[list[list[float]]]:
    """Vectors in slices whose JSON stays under EMBED_FRAME bytes: one vector at least, one slice at least."""
    row = max((len(v) for v in vectors), default=0) * _FLOAT_JSON + 4
    step = max(1, EMBED_FRAME // row)
    return [vectors[i:i + step] for i in range(0, len(vectors), step)] or [[]]


def _drop_inherited_ends() -> None:
    """Close this worker's copies of the forkserver's "alive" pipe and of the resource tracker's pipe.

    multiprocessing hands every child it forks the write ends of both (for children that would fork children or
    make semaphores of their own; a worker does neither). Kept, they held the forkserver and the tracker alive
    after a kill -9 of the daemon (while one worker was stuck), and made a stop of the tracker wait for every
    worker."""
    from multiprocessing import forkserver, resource_tracker

    for server, attr in ((getattr(forkserver, "_forkserver", None), "_forkserver_alive_fd"),
                         (getattr(resource_tracker, "_resource_tracker", None), "_fd")):
        fd = getattr(server, attr, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
            setattr(server, attr, None)


def _prctl(option: int, value) -> bool:
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def adopt_orphans(on: bool = True) -> bool:
    """Daemon side: make this process a child subreaper (Linux 3.4+), so a worker that leaves the forkserver
    (`_leave_the_forkserver`) becomes this process's own child; `on=False` ends that (children already adopted
    stay). The pool turns it on only while a worker is being forked (pool.py `_Adopting`), so no other orphan of this
    process's descendants (a grandchild of a killed `pip download`) is handed to it and left unreaped. Returns
    whether the kernel did it."""
    return sys.platform.startswith("linux") and _prctl(_PR_SET_CHILD_SUBREAPER, 1 if on else 0)


def _leave_the_forkserver(conn, daemon: int) -> bool:
    """Become the daemon's own child: fork once more and let the middle process exit, so the kernel hands this
    process to the nearest child subreaper, the daemon (`adopt_orphans`). Then the forkserver may stop while models
    are resident (idle.py: the daemon dozes), the daemon reaps its workers and reads their real exit status, and
    PR_SET_PDEATHSIG watches the daemon itself. False: the daemon is gone (or did not adopt us); exit."""
    middle = os.getpid()
    pid = os.fork()
    if pid:  # the middle process: names the worker to the daemon (which reaps it whatever happens), then goes
        with contextlib.suppress(Exception):
            _send(conn, "forked", pid=pid)
        os._exit(0)  # the forkserver reaps it
    deadline = time.monotonic() + 30
    while os.getppid() == middle and time.monotonic() < deadline:  # until the middle one is gone
        time.sleep(0.0005)
    return _die_with(daemon)


def _die_with(parent: int | None) -> bool:
    """Make the kernel SIGKILL this worker when its parent (the daemon, or else the forkserver, which exits when
    the daemon does) is gone, even if it is stopped or stuck in native code: a worker notices the daemon's
    death only when it reads its pipe. False if the parent is not (or no longer) `parent`."""
    if sys.platform.startswith("linux"):
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # a parent gone before the prctl is not seen by it: the check after it is (or the pipe's EOF ends this worker)
    return parent is None or os.getppid() == parent


def _hello(conn, daemon: int | None) -> bool:
    """A new worker's first steps: drop the inherited pipe ends, leave the forkserver if the daemon adopts its
    workers, name itself for ps/top, and tell the daemon its pid. False if the daemon is gone."""
    _drop_inherited_ends()
    _set_name(WORKER_NAME)  # first: from here the daemon tells a worker from its own children by it (engine.base_pss)
    if daemon is not None:
        if not _leave_the_forkserver(conn, daemon):
            with contextlib.suppress(Exception):  # the daemon, if alive, forks its next workers the old way
                _send(conn, "not_adopted", ppid=os.getppid())
            return False
    elif not _die_with(None):
        return False
    try:
        _send(conn, "hello", pid=os.getpid())
    except OSError:
        return False
    return True


def _set_name(name: str) -> None:
    import ctypes

    _prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]))


def worker_main(conn, daemon: int | None = None) -> None:
    """Entry point of a worker process: say hello, wait for a load order (a spare waits here), load, then serve.
    `daemon`: the daemon's pid, if it adopts its workers (adopt_orphans)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the daemon, which stops us in order
    if not _hello(conn, daemon):
        return
    from swarm_edge.workers import backend_class

    try:
        order = json.loads(conn.recv_bytes())
    except (EOFError, OSError, ValueError):
        return  # a spare that was never used: the daemon closed the pipe
    if order.get("kind") != "load":
        return
    fmt, model_path, options, calibrate = order["fmt"], order["model_path"], order["options"], order["calibrate"]

    try:
        backend = backend_class(fmt)(model_path, options=options)
    except SwarmEdgeError as exc:
        _send(conn, "load_error", error=type(exc).__name__, message=str(exc))
        return
    except Exception as exc:  # anything else the runtime raises is still a failed load, not a hang
        _send(conn, "load_error", error="ModelLoadError", message=f"{type(exc).__name__}: {exc}")
        return
    info = {"pid": os.getpid(), "load_s": backend.info.load_s, "meta": _jsonable(backend.info.meta),
            "pss": _pss(), "calibration_pss": None}
    if calibrate:
        backend.calibrate()
        info["calibration_pss"] = _pss()
    _send(conn, "ready", **info)
    try:
        _serve(conn, backend)
    finally:
        backend.close()


def _serve(conn, backend) -> None:
    while True:
        try:
            msg = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        kind = msg.get("kind")
        if kind == "close":
            return
        try:
            if kind == "generate":
                if _generate(conn, backend, msg):
                    return
            elif kind == "embed":
                if msg.get("head") is not None:  # the daemon's router: its trained head, kept here (router_host.py)
                    from swarm_edge.route_head import head_of

                    backend.router_head = head_of(msg["head"])
                    vectors = []
                elif msg.get("shares") is not None:  # the daemon's router: one prompt's task probabilities
                    from swarm_edge.route_head import scores

                    vectors = [scores(backend, getattr(backend, "router_head", None), msg["texts"][0],
                                      int(msg["prefix_chars"]), msg["shares"], float(msg["keyword_weight"]))]
                elif msg.get("prefix_chars") is not None:  # the router's features of one text: [head, whole]
                    vectors = [v.tolist() for v in backend.embed_with_prefix(msg["texts"][0], int(msg["prefix_chars"]))]
                else:
                    vectors = backend.embed(msg["texts"])
                tokens = backend.last_tokens
                for part in _slices(vectors):  # several frames: the daemon appends them in order
                    _send(conn, "result", vectors=part, tokens=tokens)
                _send(conn, "end", pss=_pss(fresh=False), cancelled=False)
            elif kind == "cancel":
                continue  # arrived after the request finished: nothing to stop
            elif kind == "sink":
                receive_sink(conn, msg, None)  # arrived after the request finished: close its descriptor
            else:
                _send(conn, "error", error="InferenceError", message=f"unknown request kind {kind!r}")
        except Exception as exc:  # keep the worker alive and the caller informed
            _send(conn, "error", **_error_of(exc))


def _generate(conn, backend, msg: dict) -> bool:
    """One generation, its events relayed as frames or, on the direct path (workers/direct.py), its tokens written
    to the client's socket; True if the daemon said "close". However it ends, a direct generation lets go of the
    socket and its end (or error) frame carries the bytes the socket did not take. A direct generation's orders are
    read by a thread of its own (direct.Orders), ended before the end frame goes."""
    writer = Writer() if msg.get("direct") else None
    orders = Orders(conn) if writer is not None else None
    failed: Exception | None = None
    stop = None
    try:
        stop = _run(conn, backend, msg, writer, orders)
    except Exception as exc:  # a failed generation (or the daemon gone): its error frame, the socket let go first
        failed = exc
    closing = False
    if orders is not None:  # orders read but not taken: a close is still obeyed, a descriptor still closed
        for left in orders.stop():
            closing = closing or left.get("kind") == "close"
            if left.get("_fd") is not None:
                os.close(left["_fd"])
    direct = writer.close() if writer is not None else None
    if failed is not None:
        _send(conn, "error", **_error_of(failed), direct=direct)
        return closing
    _send(conn, "end", pss=_pss(fresh=False), cancelled=stop is not None, direct=direct)
    return stop == "close" or closing


def _error_of(exc: Exception) -> dict[str, str]:
    if isinstance(exc, SwarmEdgeError):
        return {"error": type(exc).__name__, "message": str(exc)}
    return {"error": "InferenceError", "message": f"{type(exc).__name__}: {exc}"}


def _run(conn, backend, msg: dict, writer: Writer | None, orders: Orders | None) -> str | None:
    stop = None
    heard = time.monotonic()  # the last frame the daemon got: a direct generation ticks, for its stall watchdog
    for event in backend.generate(GenerateRequest(**msg["request"])):
        if (stop := _orders(conn, writer, orders)) is not None:
            break
        if writer is not None and not writer.relaying:
            if event["type"] == "token":
                writer.token(event["text"])
                if writer.gone:  # the client hung up: nobody reads the rest
                    stop = "cancel"
                    break
                if (backed := writer.backed_change()) is not None:  # a chunk is (no longer) half written
                    _send(conn, "event", event={"type": "backed", "on": backed})
                elif time.monotonic() - heard > TICK_S:
                    _send(conn, "event", event={"type": "tick"})
                else:
                    continue
                heard = time.monotonic()
                continue
            if not writer.decided:  # the answer is done before the daemon said where it goes: wait for it
                stop = _orders(conn, writer, orders, wait=True)
                if stop is not None:
                    break
            if not writer.relaying:
                _send(conn, "event", event=writer.sent())
        _send(conn, "event", event=event)
    return stop


def _orders(conn, writer: Writer | None, orders: Orders | None = None, *, wait: bool = False) -> str | None:
    """Read the daemon's orders during a generation: "sink" (the direct path's hand-over, answered here), and
    "cancel" or "close" (returned: both stop it). With `wait`, block until the hand-over or a stop. A direct
    generation's come from `orders` (read by its thread), a relayed one's from the pipe."""
    while True:
        if orders is not None:
            msg = orders.next(wait)
            if msg is None:
                return None
            fd = msg.get("_fd")
        elif wait or conn.poll():
            msg = json.loads(conn.recv_bytes())
            fd = reduction.recv_handle(conn) if msg.get("kind") == "sink" and msg.get("fd") else None
        else:
            return None
        if msg.get("kind") != "sink":
            if fd is not None:
                os.close(fd)
            return msg.get("kind") or "cancel"
        for text in take_sink(msg, fd, writer):  # relay after all: the held tokens go as events
            _send(conn, "event", event={"type": "token", "text": text})
        if wait:
            return None


def _decode(frame: bytes) -> dict:
    """A worker's frame as a message; ValueError for anything else (bad JSON, too deeply nested, not a message)."""
    try:
        msg = json.loads(frame)
    except RecursionError:  # [[[[...]]]] deeper than the parser's stack: a ValueError like any other bad frame
        raise ValueError("a frame nested too deeply") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("kind"), str) or msg["kind"].startswith("_"):
        raise ValueError("a frame that is not a message")  # "_dead" and the like are the daemon's own
    return msg


def _jsonable(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, type(None)))}
