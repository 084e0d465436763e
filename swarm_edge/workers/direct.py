"""The direct token path: a streamed answer's tokens go from the worker straight to the client's socket.

Relayed, each token cost the daemon a wake-up (read the worker's frame, pass it up five generators, frame it as SSE,
write it), and on a small machine the daemon's CPU is taken from the cores the model decodes on. Direct:

    daemon  routes, leases, sends the generation with `direct: true` (the worker holds its tokens), writes the
            response head, then hands the connection over: a "sink" order with the Framing, and the socket's
            descriptor passed with SCM_RIGHTS over the worker's socketpair (or no descriptor: relay after all)
    worker  writes each token as the response's next piece (Framing: the daemon's own chunk bytes, HTTP/1.1
            chunked coding), never blocking: what the socket does not take waits in its buffer; at the end it sends
            the daemon the text (for the answer's checks and trace), when the first token went out, and the bytes
            the socket has not taken yet
    daemon  writes those bytes first, then the last pieces (finish reason, usage, the trace) and does the
            bookkeeping: nothing of the token stream passes through it

The client sees the same bytes either way. A client gone mid-answer is an EPIPE in the worker, which stops the
generation; a deadline or a disconnect seen by the daemon cancels it as before.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing import reduction
from typing import Any

from swarm_edge.errors import ConfigError, InferenceError

DIRECT_ENV = "SWARM_EDGE_DIRECT"  # "off": every token is relayed through the daemon (to compare, or to debug)
TEXT, NOW = "\x00", "\x01"  # the template's slots: the token, and the time (RFC 3339), each a JSON string
_SLOT = re.compile(r'("\\u000[01]")')


def enabled(env: Mapping[str, str]) -> bool:
    """Whether streamed answers take the direct path: SWARM_EDGE_DIRECT on (the default) or off. Linux only:
    elsewhere multiprocessing's descriptor passing waits for an acknowledgement, which would block the event loop
    until the worker's next token."""
    raw = env.get(DIRECT_ENV, "on").strip().lower()
    if raw not in ("on", "off", "1", "0"):
        raise ConfigError(f"{DIRECT_ENV}={raw!r}: expected on or off")
    return raw in ("on", "1") and sys.platform.startswith("linux")


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Framing:
    """How one token becomes response bytes: `template` is one piece as the daemon writes it, with the strings
    TEXT and NOW (JSON-escaped in it) where the token and the time go; `first` goes out with the first token
    (OpenAI's role chunk); each write is an HTTP/1.1 chunk."""

    template: str
    first: str = ""

    def __post_init__(self) -> None:
        parts = _SLOT.split(self.template)
        object.__setattr__(self, "_parts", parts)
        if not any(p == json.dumps(TEXT) for p in parts):
            raise ValueError("a framing template needs the token's slot")

    def piece(self, text: str) -> bytes:
        out = []
        for p in self._parts:  # type: ignore[attr-defined]
            if p == '"\\u0000"':
                out.append(json.dumps(text, ensure_ascii=False))
            elif p == '"\\u0001"':
                out.append(json.dumps(now_rfc3339()))
            else:
                out.append(p)
        return "".join(out).encode()

    def wire(self) -> dict[str, str]:
        return {"template": self.template, "first": self.first}


def chunk(data: bytes) -> bytes:
    """`data` as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class Writer:
    """The worker's end of one direct generation: holds tokens until the daemon decides, then writes them to the
    client's socket (or gives them back to be relayed)."""

    def __init__(self) -> None:
        self.decided = False
        self.fd: int | None = None
        self.framing: Framing | None = None
        self.held: list[str] = []
        self.texts: list[str] = []
        self.out = bytearray()     # bytes the socket has not taken yet
        self.t_first: float | None = None
        self.gone = False          # the client hung up
        self.flagged = False       # whether the daemon was told a chunk is half written (backed_change)

    @property
    def relaying(self) -> bool:
        return self.decided and self.fd is None

    def decide(self, framing: dict[str, Any] | None, fd: int | None) -> list[str]:
        """The daemon's answer: a framing and a socket to write to, or neither (relay: the held tokens are
        returned, to be sent as events)."""
        self.decided = True
        if fd is None or framing is None:
            if fd is not None:
                os.close(fd)
            held, self.held = self.held, []
            return held
        self.fd = fd  # first: closed by close() even if the framing is refused
        os.set_inheritable(fd, False)
        os.set_blocking(fd, False)
        self.framing = Framing(**framing)
        held, self.held = self.held, []
        for text in held:
            self.token(text)
        return []

    def token(self, text: str) -> None:
        if not self.decided:
            self.held.append(text)
            return
        assert self.framing is not None
        if self.t_first is None:
            self.t_first = time.perf_counter()
            self.out += chunk(self.framing.first.encode() + self.framing.piece(text))
        else:
            self.out += chunk(self.framing.piece(text))
        self.texts.append(text)
        self._flush()

    def _flush(self) -> None:
        if self.fd is None or not self.out or self.gone:
            return
        try:
            n = os.write(self.fd, self.out)
        except (BlockingIOError, InterruptedError):
            return  # the client reads slowly: the rest waits here, and the model goes on
        except OSError:  # EPIPE, ECONNRESET: the client is gone
            self.gone = True
            self.out.clear()
            return
        del self.out[:n]

    def backed_change(self) -> bool | None:
        """True when the socket stopped taking bytes mid-stream (a chunk may be half written), False when it took
        them all again, None when nothing changed: the daemon must know, for a worker that dies meanwhile leaves
        the client a broken chunk, which no error chunk can follow."""
        backed = bool(self.out)
        if backed == self.flagged:
            return None
        self.flagged = backed
        return backed

    def sent(self) -> dict[str, Any]:
        """The event that tells the daemon what the client was sent (before the generation's done event)."""
        return {"type": "sent", "text": "".join(self.texts), "t_first": self.t_first}

    def close(self) -> dict[str, Any]:
        """Let go of the socket; what the daemon must write before anything else (base64), for the end frame."""
        self._flush()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        return {"pending": base64.b64encode(bytes(self.out)).decode(), "gone": self.gone}


def receive_sink(conn, msg: dict[str, Any], writer: Writer | None) -> list[str]:
    """The worker reads a "sink" order (and its descriptor, when it has one); held tokens to relay, if any."""
    return take_sink(msg, reduction.recv_handle(conn) if msg.get("fd") else None, writer)


def take_sink(msg: dict[str, Any], fd: int | None, writer: Writer | None) -> list[str]:
    """A "sink" order and its descriptor, already read: to the writer (held tokens to relay, if any)."""
    if writer is None or writer.decided:  # not expected: a stray order must not leak the descriptor
        if fd is not None:
            os.close(fd)
        return []
    return writer.decide(msg.get("framing"), fd)


class Orders:
    """A direct generation's orders, read on a thread of their own while the model runs (the worker's side).

    The hand-over arrives while the model reads the prompt. Read on the main thread, it waited for the first token,
    and its reads (a poll, the frame, the descriptor) came between that token and the client: about 0.2 ms of the
    time to first token. Here a thread reads each order as it arrives; the model's loop takes them from `got`, with
    no system call per token. Only this thread reads the pipe while it runs (the main thread still writes: the pipe
    is a socket); `stop()` ends it before the generation's end frame goes, so the daemon's next order is read by the
    main thread again. A sink's descriptor comes as the order's "_fd"; the daemon gone reads as a "cancel".
    """

    def __init__(self, conn) -> None:
        import _thread
        import collections
        import threading

        self.conn = conn
        self.got: collections.deque[dict[str, Any]] = collections.deque()
        self.failed: BaseException | None = None  # what ended the thread other than an order (raised by next())
        self._arrived, self._ended = threading.Event(), threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        try:
            _thread.start_new_thread(self._read, ())  # not threading.Thread: its start() waits for the thread
        except BaseException:
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise

    def _read(self) -> None:
        import select

        try:
            poller = select.poll()
            poller.register(self.conn.fileno(), select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            while not any(fd == self._wake_r for fd, _ in poller.poll()):
                msg = self._one()
                self.got.append(msg)
                self._arrived.set()
                if msg.get("kind") != "sink":
                    return  # cancel or close: the generation stops, and what follows is the main thread's to read
        except BaseException as exc:  # noqa: BLE001 - a descriptor that did not come (out of descriptors, say)
            self.failed = exc
        finally:
            self._ended.set()
            self._arrived.set()

    def _one(self) -> dict[str, Any]:
        try:
            msg = json.loads(self.conn.recv_bytes())
            if not isinstance(msg, dict):
                return {"kind": "cancel"}
            if msg.get("kind") == "sink" and msg.get("fd"):
                msg["_fd"] = reduction.recv_handle(self.conn)
            return msg
        except (EOFError, OSError, ValueError):
            return {"kind": "cancel"}  # the daemon is gone: stop; the main thread's next read ends the worker

    def next(self, wait: bool) -> dict[str, Any] | None:
        """The next order (None: none yet); with `wait`, block until one comes ("cancel" if the reader ended).
        InferenceError if the thread failed: the generation ends with an error frame, as a failed read did."""
        while True:
            if self.got:
                return self.got.popleft()
            if self.failed is not None:
                raise InferenceError(f"reading the daemon's orders failed: {type(self.failed).__name__}: "
                                     f"{self.failed}") from self.failed
            if not wait:
                return None
            if self._ended.is_set():
                return {"kind": "cancel"}
            self._arrived.wait()
            self._arrived.clear()

    def stop(self) -> list[dict[str, Any]]:
        """End the thread; the orders it read that nobody took (their descriptors still open)."""
        os.write(self._wake_w, b"\0")
        self._ended.wait()
        os.close(self._wake_r)
        os.close(self._wake_w)
        left = list(self.got)
        self.got.clear()
        return left


def send_sink(conn, pid: int, framing: Framing | None, fd: int | None) -> None:
    """The daemon's side of the hand-over: the order, then the descriptor over SCM_RIGHTS (a byte of its own)."""
    conn.send_bytes(json.dumps({"kind": "sink", "fd": fd is not None,
                                "framing": framing.wire() if framing is not None else None}).encode())
    if fd is not None:
        reduction.send_handle(conn, fd, pid)


def pending(end: dict[str, Any]) -> bytes:
    """The bytes an end frame says the worker could not write."""
    raw = (end.get("direct") or {}).get("pending") or ""
    try:
        return base64.b64decode(raw, validate=True) if isinstance(raw, str) else b""
    except ValueError:
        return b""


class Sink:
    """The daemon's end of the direct path for one streamed response. The model session that sends the generation
    binds its worker here; the response, once its head is written, hands the connection over (or declines: relay);
    the bytes the worker could not write are kept in `pending`, to go out before anything else."""

    def __init__(self) -> None:
        self.worker: Any = None
        self.pending = bytearray()
        self.direct = False
        self.backed = False   # the worker said a chunk may be half written (it could not write all it had)
        self.ended = False    # the worker's end (or error) frame came: it let go of the socket in order

    @property
    def torn(self) -> bool:
        """The worker held the socket with a chunk maybe half written and is gone without its end frame: the
        response cannot be finished; the connection must be aborted."""
        return self.direct and self.backed and not self.ended

    def hand_over(self, framing: Framing, sock: Any) -> bool:
        """Give the worker the client's socket (None: relay); whether the tokens now go straight to the client."""
        worker, self.worker = self.worker, None
        if worker is None:
            return False
        self.direct = worker.hand_over(framing, sock.fileno() if sock is not None else None)
        return self.direct

    def take(self) -> bytes:
        out, self.pending = bytes(self.pending), bytearray()
        return out


__all__ = ["DIRECT_ENV", "NOW", "TEXT", "Framing", "Orders", "Sink", "Writer", "chunk", "enabled", "now_rfc3339",
           "pending", "receive_sink", "send_sink", "take_sink"]
