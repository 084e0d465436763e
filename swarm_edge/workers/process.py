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


def _pss() -> int:
    """This process's peak proportional set size in bytes, as far as it can be known (0 if unreadable).

    Current PSS, plus what was freed since the high-water mark (peak RSS - current RSS): onnxruntime's
    activations are gone by the time a request ends, but they were there, and the budget must cover them.
    """
    import resource

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
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return pss + max(0, peak_rss - rss)


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


def _die_with_the_daemon() -> None:
    """Make the kernel SIGKILL this worker when the daemon is gone, even if it is stopped or stuck in native code.

    A worker notices the daemon's death only when it reads its pipe. The kernel can kill it when its parent dies
    (Linux: PR_SET_PDEATHSIG); the parent is the forkserver, which exits when the daemon does - once no worker
    holds the write end of the forkserver's "alive" pipe, which multiprocessing hands to every child it forks
    (for children that would fork children of their own; a worker never does). With that copy kept, one stuck
    worker kept the forkserver, the resource tracker and itself alive after a kill -9 of the daemon, forever.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
        server._forkserver_alive_fd = None  # type: ignore[union-attr]
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # a forkserver gone before the prctl is not seen by it; the pipe's EOF below then ends this worker


def worker_main(conn) -> None:
    """Entry point of a worker process: wait for a load order (a spare waits here), load, then serve."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the daemon, which stops us in order
    _die_with_the_daemon()
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
                if msg.get("prefix_chars") is not None:  # the router's features of one text: [head, whole]
                    vectors = [v.tolist() for v in backend.embed_with_prefix(msg["texts"][0], int(msg["prefix_chars"]))]
                else:
                    vectors = backend.embed(msg["texts"])
                tokens = backend.last_tokens
                for part in _slices(vectors):  # several frames: the daemon appends them in order
                    _send(conn, "result", vectors=part, tokens=tokens)
                _send(conn, "end", pss=_pss(), cancelled=False)
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
    _send(conn, "end", pss=_pss(), cancelled=stop is not None, direct=direct)
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
