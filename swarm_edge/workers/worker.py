"""The daemon's handle on one worker process: send it orders, read its frames without blocking the event loop,
watch it for stalls, and turn its death or its error frames into SwarmEdgeErrors."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import AsyncGenerator
from typing import Any

from swarm_edge.errors import (
    ClientGoneError,
    InferenceError,
    ModelLoadError,
    SwarmEdgeError,
    WorkerCrashedError,
)
from swarm_edge.workers.base import GenerateRequest
from swarm_edge.workers.direct import Framing, Sink, pending, send_sink
from swarm_edge.workers.limits import (  # noqa: F401  (re-exported: pool.py and tests import them from here)
    LOAD_TIMEOUT_S,
    STALL_ENV,
    STALL_FIRST_S,
    STALL_NEXT_S,
    STOP_TIMEOUT_S,
    _stopped_or_idle,
    off_loop,
    stall_windows,
)
from swarm_edge.workers.process import _HEADER, MAX_FRAME, _decode

log = logging.getLogger("swarm_edge.pool")

class Worker:
    """The daemon's handle on one worker process. One request at a time (the scheduler guarantees it)."""

    def __init__(self, model_id: str, process, conn, loop: asyncio.AbstractEventLoop,
                 stall: tuple[float, float] = (STALL_FIRST_S, STALL_NEXT_S)) -> None:
        self.model_id = model_id
        self.stall = stall                           # (first, next) message windows of a generation
        self.process = process
        self.conn = conn
        self.info: dict[str, Any] = {}
        self.last_pss = 0
        self.last_embed_tokens: int | None = None
        self.requests = 0            # requests served (0 = the lease holding it is the one that waited for the load)
        self._settling: asyncio.Task | None = None   # a cancelled request's drain, finished before the next one
        self._inflight = False                       # a generation was sent and its end not read yet
        self._sink: Sink | None = None              # the direct path's response, while its generation runs
        self._decided = False                        # whether the hand-over (or relay) order was sent
        self._loop = loop
        self._queue: asyncio.Queue[dict] = asyncio.Queue()
        self._dead = False
        self._broke: str | None = None               # how the worker broke the protocol, if it did
        # The stall watchdog of the request in flight (event loop only): whether one is watched, when it was sent,
        # when the worker was last heard from, its CPU seconds at the last look, the timer, and why the worker was
        # killed as hung, if it was.
        self._sent_at = self._heard = 0.0
        self._cpu: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._stalled: str | None = None
        # Frames are read by the event loop itself when the pipe is readable: one wake-up per token, no
        # reader thread competing for the GIL and the cores the worker decodes on.
        self._fd = conn.fileno()
        self._buf = bytearray()
        loop.add_reader(self._fd, self._on_readable)

    @property
    def pid(self) -> int:
        """OS process id of the worker."""
        return self.process.pid

    @property
    def alive(self) -> bool:
        """False once the process has exited or its pipe closed."""
        return not self._dead and self.process.is_alive()

    def _on_readable(self) -> None:
        # One read per wake-up, frames parsed from our own buffer: multiprocessing's recv_bytes costs a poll and
        # two reads per frame, and at one frame per token those syscalls were most of the daemon's CPU (which,
        # on a small machine, is taken from the cores the model decodes on). Frames are multiprocessing's:
        # a 4-byte big-endian length, then the bytes.
        try:
            data = os.read(self._fd, 1 << 16)
        except InterruptedError:
            return
        except OSError:
            self._mark_dead()
            return
        if not data:
            self._mark_dead()
            return
        self._heard = self._loop.time()
        buf = self._buf
        buf += data
        start = 0
        try:
            while len(buf) - start >= 4:
                (size,) = _HEADER.unpack_from(buf, start)
                if size < 0 or size > MAX_FRAME:
                    raise ValueError(f"a frame of {size:,} bytes")
                end = start + 4 + size
                if len(buf) < end:
                    break
                self._queue.put_nowait(_decode(bytes(buf[start + 4:end])))
                start = end
        except ValueError as exc:  # a worker that breaks the protocol is treated as dead
            self._broke = str(exc)
            self.kill()
            self._mark_dead()
            return
        del buf[:start]

    def _mark_dead(self) -> None:
        self._disarm()
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None
        if not self._dead:
            self._dead = True
            self._queue.put_nowait({"kind": "_dead"})

    def _crash_message(self) -> str:
        if self._stalled:
            return f"worker for {self.model_id} (pid {self.pid}) stalled: {self._stalled}; it was killed"
        self.process.join(timeout=1.0)
        code = self.process.exitcode
        if code is not None and code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exit code {code}"
        if self._broke:
            how += f" after it broke the protocol (it sent {self._broke})"
        return f"worker for {self.model_id} (pid {self.pid}) died: {how}"

    async def _next(self, timeout: float | None = None) -> dict:
        msg = await asyncio.wait_for(self._queue.get(), timeout)
        if msg["kind"] == "_dead":
            self._queue.put_nowait(msg)  # every later reader sees it too
            raise WorkerCrashedError(self._crash_message())
        return msg

    def order_load(self, fmt: str, model_path: str, options: dict[str, Any], *, calibrate: bool) -> None:
        """Tell the (spare) process which model to load; `wait_ready` then waits for it."""
        self._send({"kind": "load", "fmt": fmt, "model_path": model_path, "options": options, "calibrate": calibrate})

    async def wait_ready(self, timeout: float = LOAD_TIMEOUT_S) -> dict:
        """Wait for the load to finish; ModelLoadError (with the worker's reason) if it did not."""
        try:
            msg = await self._next(timeout)
        except WorkerCrashedError as exc:
            raise ModelLoadError(f"{exc} while loading") from None
        except asyncio.TimeoutError:
            await self.stop()
            raise ModelLoadError(f"{self.model_id}: load took longer than {timeout:.0f} s; worker stopped") from None
        if msg["kind"] == "load_error":
            self.process.join(timeout=STOP_TIMEOUT_S)
            raise _error(msg)
        self.info = msg
        self.last_pss = msg.get("calibration_pss") or msg.get("pss") or 0
        return msg

    async def begin(self, request: GenerateRequest, sink: Sink | None = None) -> None:
        """Send a generation to the worker, so the model starts on the prompt while the caller gets ready.

        Follow with `generate(request, sent=True)` to read it, or `abandon()` if it is not wanted after all. With a
        `sink` the worker holds its tokens until the response hands it the client's connection (workers/direct.py).
        """
        await self._settle()
        self.requests += 1
        order: dict[str, Any] = {"kind": "generate", "request": request.wire()}
        if sink is not None:
            order["direct"] = True
        self._send(order)
        self._inflight = True
        self._sink, self._decided = sink, False
        if sink is not None:
            sink.worker = self
        self._start_watch()

    def hand_over(self, framing: Framing, fd: int | None) -> bool:
        """The direct path's hand-over (Sink.hand_over): the socket `fd` (None: relay) to the generation in flight;
        whether the worker now writes to it. Sent once, and never after a cancel: the worker reads it only while the
        generation that waits for it runs."""
        if self._sink is None or self._decided or not self._inflight or not self.alive:
            return False
        self._decided = True
        try:
            send_sink(self.conn, self.pid, framing if fd is not None else None, fd)
        except (OSError, ValueError) as exc:
            # the order may have gone without its descriptor: the worker would wait for it, out of step with us
            log.warning("handing a connection to %s (pid %d) failed (%s); killing the worker", self.model_id,
                        self.pid, exc)
            self.kill()
            return False
        return fd is not None

    def _ended(self, msg: dict) -> None:
        """An end or error frame: keep the bytes a direct generation left to write for its response."""
        if self._sink is not None:
            self._sink.ended = True
            self._sink.worker = None  # a late hand-over must not reach this worker's next generation
            if msg.get("direct"):
                self._sink.pending += pending(msg)
        self._sink = None

    async def generate(self, request: GenerateRequest, *, sent: bool = False) -> AsyncGenerator[dict, None]:
        """Stream events of one generation; closing the iterator early cancels it in the worker."""
        if not sent:
            await self.begin(request)
        try:
            if self._sink is not None and not self._decided:  # read without a hand-over: relay, do not hold
                self._sink.worker = None
                self.hand_over(Framing('"\\u0000"'), None)
            while True:
                msg = await self._next()
                if msg["kind"] == "event":
                    kind = msg["event"].get("type")
                    if kind == "backed" and self._sink is not None:  # the direct path: see Sink.torn
                        self._sink.backed = bool(msg["event"].get("on"))
                    if kind in ("backed", "tick"):  # a direct generation's own frames (tick: it is alive)
                        continue
                    yield msg["event"]
                elif msg["kind"] == "end":
                    self.last_pss = msg.get("pss") or self.last_pss
                    self._inflight = False
                    self._disarm()
                    gone = (msg.get("direct") or {}).get("gone")
                    self._ended(msg)
                    if gone:  # the worker found the client gone and stopped: not an answer
                        raise ClientGoneError("the client hung up mid-answer; its generation was stopped")
                    return
                elif msg["kind"] == "error":
                    self._inflight = False
                    self._disarm()
                    self._ended(msg)
                    raise _error(msg)
        finally:
            await self.abandon()

    def _start_watch(self) -> None:
        """Watch the request just sent for progress (see STALL_FIRST_S) until `_disarm`."""
        self._sent_at, self._cpu = self._loop.time(), None
        self._arm(self.stall[0])

    def _arm(self, delay: float) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog = self._loop.call_later(delay, self._watch)

    def _disarm(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _watch(self) -> None:
        """The stall watchdog (see STALL_FIRST_S): a worker silent past its window that is stopped or did not
        compute is hung; it is killed (SIGKILL ends a stopped process too), so the reader raises WorkerCrashedError
        saying it stalled, the scheduler drops the worker and the next request loads the model afresh. Generations
        and embeddings are watched; loads have their own timeout (LOAD_TIMEOUT_S)."""
        self._watchdog = None  # only armed while a request is in flight (_disarm cancels it, also on death)
        window = self.stall[1] if self._heard > self._sent_at else self.stall[0]
        if self._sink is not None and not self._decided:  # the direct path waits for our hand-over, not the worker
            self._arm(window)
            return
        quiet = self._loop.time() - max(self._heard, self._sent_at)
        if quiet < window:  # heard from since the timer was set: wait for the rest of the new window
            self._arm(window - quiet)
            return
        why, self._cpu = _stopped_or_idle(self.pid, self._cpu)  # one read of /proc, rare: fine on the loop
        if why is None:
            self._arm(window)  # computing (a long prompt on a slow CPU), or first look: look again after a window
            return
        self._stalled = f"no output for {quiet:.1f} s and {why}"
        log.warning("worker for %s (pid %d) stalled: %s; killing it", self.model_id, self.pid, self._stalled)
        self.kill()
        self._mark_dead()

    async def abandon(self) -> None:
        """Cancel the generation in flight (if any) and drain it, whatever happens to the caller meanwhile."""
        if self._inflight and self.alive:
            self._inflight = False
            self._disarm()  # the drain has its own deadline (_cancel)
            # Shielded: when the caller is being cancelled (client gone) every await here may be cancelled
            # again; the drain must still finish, or the next request would read this one's tokens.
            self._settling = self._loop.create_task(self._cancel())
            await asyncio.shield(self._settling)

    async def _settle(self) -> None:
        if self._settling is not None:
            await asyncio.shield(self._settling)
            self._settling = None

    async def embed(self, texts: list[str], prefix_chars: int | None = None, **router: Any) -> list[list[float]]:
        """Vectors for texts; with `prefix_chars`, the router's two vectors of one text (embed_with_prefix). The
        daemon's router (router_host.py) also sends its head (`head`: no vectors back) and asks for one text's task
        probabilities (`shares`, `keyword_weight`: one vector back)."""
        await self._settle()
        self.requests += 1
        self._send({"kind": "embed", "texts": texts, **({"prefix_chars": prefix_chars} if prefix_chars is not None
                                                        else {}), **router})
        self._start_watch()  # a stopped worker would hold the request (and the compute slot) forever
        vectors: list[list[float]] = []
        answered = False
        try:
            while True:
                msg = await self._next()
                if msg["kind"] == "result":  # one frame per slice of the vectors (_slices), in order
                    vectors += msg["vectors"]
                    self.last_embed_tokens = msg.get("tokens")
                elif msg["kind"] == "end":
                    answered = True
                    self.last_pss = msg.get("pss") or self.last_pss
                    return vectors
                elif msg["kind"] == "error":
                    answered = True
                    raise _error(msg)
        finally:
            self._disarm()
            if not answered and self.alive:
                # Abandoned mid-answer (the request's deadline, a caller cancelled): an embedding cannot be
                # cancelled in the worker, and its late frames would be read as the next request's answer.
                log.warning("embedding request to %s (pid %d) abandoned mid-answer; killing the worker",
                            self.model_id, self.pid)
                self.kill()
                self._mark_dead()

    async def _cancel(self) -> None:
        """Stop the running generation and drain its remaining events; kill the worker if it will not stop."""
        try:
            self._send({"kind": "cancel"})
            while True:
                msg = await self._next(timeout=30.0)
                if msg["kind"] in ("end", "error"):
                    self._ended(msg)
                    return
        except (WorkerCrashedError, asyncio.TimeoutError, OSError):
            self.kill()

    def _send(self, msg: dict) -> None:
        if not self.alive:
            raise WorkerCrashedError(self._crash_message())
        try:
            self.conn.send_bytes(json.dumps(msg).encode())
        except (OSError, ValueError) as exc:
            raise WorkerCrashedError(self._crash_message()) from exc

    def kill(self) -> None:
        """SIGKILL the worker (used when it does not answer)."""
        if self.process.is_alive():
            self.process.kill()

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """End the worker and wait until the process is gone, so its memory is back when this returns.

        Only idle workers are stopped (the scheduler never evicts a model in use) and a worker keeps no
        state worth saving, so SIGKILL is the right tool: the kernel frees everything at once, with no
        interpreter teardown to wait for.
        """
        if self.process.is_alive():
            self.process.kill()
        await off_loop(self.process.join, timeout)
        self._mark_dead()
        self.conn.close()


def _error(msg: dict) -> SwarmEdgeError:
    from swarm_edge import errors

    cls = getattr(errors, msg.get("error", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, SwarmEdgeError)):
        cls = InferenceError
    return cls(msg.get("message", "worker error"))
