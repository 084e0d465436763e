"""Streaming answers over HTTP: priming a generation (errors before its Start become HTTP errors), the deadline,
the response that never lets a slow client hold a model, and the SSE / NDJSON framing."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi.responses import StreamingResponse

from swarm_edge import errors
from swarm_edge.api.metrics import Metrics
from swarm_edge.events import Done, Event
from swarm_edge.orchestration.answer import Answer
from swarm_edge.workers.direct import Framing, Sink, now_rfc3339

TRANSPORT = "swarm_edge.transport"  # the scope key under which the daemon's protocol puts the connection's transport

T = TypeVar("T")
SSE, NDJSON = "text/event-stream", "application/x-ndjson"


class ClosingStream(StreamingResponse):
    """A streamed response over a primed generation: counted as an open stream while it runs, and however it
    ends (client gone included) its body and the generation under it are closed, which frees the lease.

    The generation never waits for the client: a producer task runs it into a queue at the model's pace and the
    response sends what is queued, so a client that reads slowly or not at all (a frozen app) holds no model and
    no compute slot; only its own connection waits, and the server aborts that after its send timeout. At
    `deadline` (event-loop time) the generation is cut off and the body ends with `error_chunk(DeadlineError)`.
    """

    def __init__(self, content: Any, *, events: AsyncIterator[Event], metrics: Metrics,
                 deadline: float | None = None, error_chunk: Callable[[Exception], bytes] | None = None,
                 direct: tuple[Sink, Framing] | None = None, **kw: Any) -> None:
        super().__init__(content, **kw)
        self.events, self.metrics = events, metrics
        self.deadline, self.error_chunk = deadline, error_chunk
        self.direct = direct
        self.transport: Any = None

    async def __call__(self, scope, receive, send) -> None:
        self.transport = scope.get(TRANSPORT)
        self.metrics.streams_open += 1
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.metrics.streams_open -= 1
            with contextlib.suppress(Exception):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
            await self.events.aclose()  # type: ignore[attr-defined]

    async def stream_response(self, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        self._hand_over()
        queue: asyncio.Queue = asyncio.Queue()  # bounded by the answer: max_tokens small chunks
        producer = asyncio.get_running_loop().create_task(self._produce(queue))
        try:
            while True:
                chunks = [await queue.get()]
                while not queue.empty():  # a slow reader gets what piled up in one write
                    chunks.append(queue.get_nowait())
                end = chunks[-1] is None
                body = b"".join(c for c in chunks if c is not None)
                if not self._write_pending():
                    return
                if body:
                    await send({"type": "http.response.body", "body": body, "more_body": not end})
                if end:
                    if not body:
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
        finally:
            if not producer.done():
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer

    def _hand_over(self) -> None:
        """The direct path (workers/direct.py): with the head written and nothing else queued, the worker gets the
        connection; otherwise (h11, no transport in the scope, a closing or backed-up connection) it relays."""
        if self.direct is None:
            return
        sink, framing = self.direct
        t = self.transport
        # the worker writes HTTP/1.1 chunks: only under a chunked head (no length, no content coding), and only
        # after everything uvicorn queued has gone out
        chunked = not any(k.lower() in (b"content-length", b"content-encoding") for k, _ in self.raw_headers)
        ready = chunked and t is not None and not t.is_closing() and t.get_write_buffer_size() == 0
        if sink.hand_over(framing, t.get_extra_info("socket") if ready else None):
            self.metrics.direct_streams += 1

    def _write_pending(self) -> bool:
        """What a direct worker could not write goes out first: it is the stream's next bytes, already framed.
        False when the response cannot go on: its worker died holding the socket with a chunk maybe half written
        (the connection is aborted: no error chunk can follow a broken one)."""
        if self.direct is None or self.transport is None:
            return True
        sink, t = self.direct[0], self.transport
        if sink.torn:
            t.abort()
            return False
        if sink.pending and not t.is_closing():
            t.write(sink.take())
        return True

    async def _produce(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        expired = []

        def expire() -> None:
            expired.append(True)
            assert task is not None
            task.cancel()

        timer = loop.call_at(self.deadline, expire) if self.deadline is not None else None
        try:
            async for chunk in self.body_iterator:
                queue.put_nowait(chunk if isinstance(chunk, bytes | memoryview) else chunk.encode(self.charset))
        except asyncio.CancelledError:
            if not expired:
                raise
            await self.events.aclose()  # type: ignore[attr-defined]  # the model is free for the next request now
            self.metrics.deadlines += 1
            if self.error_chunk is not None:
                queue.put_nowait(self.error_chunk(errors.DeadlineError(deadline_text())))
        finally:
            if timer is not None:
                timer.cancel()
            queue.put_nowait(None)


def deadline_text() -> str:
    return "the request ran past the daemon's per-request deadline (serve --request-timeout); its model was freed"


async def within(aw: Awaitable[T], deadline: float | None, metrics: Metrics) -> T:
    """Await `aw` until `deadline` (event-loop time; None: no limit), else raise DeadlineError."""
    if deadline is None:
        return await aw
    try:
        return await asyncio.wait_for(aw, max(0.0, deadline - asyncio.get_running_loop().time()))
    except asyncio.TimeoutError:
        metrics.deadlines += 1
        raise errors.DeadlineError(deadline_text()) from None


async def prime(events: AsyncIterator[Event], deadline: float | None, metrics: Metrics) -> Event:
    """Run a stream until its model is leased; errors before that are raised (and become HTTP errors)."""
    try:
        return await within(events.__anext__(), deadline, metrics)
    except BaseException:
        await events.aclose()  # type: ignore[attr-defined]
        raise


async def final_answer(events: AsyncIterator[Event], deadline: float | None, metrics: Metrics) -> Answer:
    """Run a primed stream to its end and return the Answer (for answers that are not streamed)."""
    async def run() -> Answer:
        async for ev in events:
            if isinstance(ev, Done):
                return ev.result
        raise errors.InferenceError("the answer ended without a result")  # the orchestrator always ends with one

    try:
        return await within(run(), deadline, metrics)
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def ndjson(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def ndjson_error(exc: Exception) -> bytes:
    """The NDJSON line that ends an Ollama stream with an error."""
    return ndjson({"error": str(exc)})


def usage(answer: Answer) -> dict:
    prompt = answer.prompt_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": answer.tokens, "total_tokens": prompt + answer.tokens}


def ns(seconds: float | None) -> int:
    return int((seconds or 0.0) * 1e9)


__all__ = ["NDJSON", "SSE", "TRANSPORT", "ClosingStream", "deadline_text", "final_answer", "ndjson", "ndjson_error",
           "now_rfc3339", "ns", "prime", "sse", "usage", "within"]
