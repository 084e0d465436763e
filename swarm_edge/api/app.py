"""The HTTP API: OpenAI-compatible /v1, Ollama-compatible /api, and /swarm, /metrics, /health.

State lives on `app.state` (the Engine, counters). Every generation goes through `orchestrator.stream`,
which yields a `start` event once the model is leased: the handlers wait for it before they answer, so
queue-full (503 + Retry-After), budget (507, both numbers) and unknown-model (404) errors become proper
HTTP answers even for streamed requests. Once a stream has started, an error becomes a final error event
in the stream. Streams are closed on every path (client gone included), which releases the lease.
"""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import hmac
import json
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from swarm_edge import __version__, errors, orchestrator
from swarm_edge.api.schemas import (
    EMBEDDING_STATUSES,
    GENERATION_STATUSES,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingRequest,
    Embeddings,
    Health,
    ModelCard,
    ModelList,
    OllamaAnswer,
    OllamaChatRequest,
    OllamaEmbeddings,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    OllamaModels,
    RouteOut,
    RouteRequest,
    Status,
    Version,
    finish_openapi,
    responses,
)
from swarm_edge.engine import Engine

log = logging.getLogger("swarm_edge.api")
MAX_BODY = 1 << 20
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
# scope["server"] of a Unix-socket connection whose peer uid the server's protocol checked (server.py sets it);
# any other connection, one the server could not classify included, is treated as TCP: token and Host required
UNIX_PEER_CHECKED = "swarm-edge:unix-peer-checked"
SSE, NDJSON = "text/event-stream", "application/x-ndjson"

# exception -> (HTTP status, OpenAI error code); the first match wins, so subclasses come first
STATUS: list[tuple[type[errors.SwarmEdgeError], int, str]] = [
    (errors.UnknownModelError, 404, "model_not_found"),
    (errors.ContextLengthError, 400, "context_length_exceeded"),
    (errors.BudgetError, 507, "insufficient_memory"),
    (errors.BusyError, 503, "server_busy"),
    (errors.DeadlineError, 504, "request_timeout"),
    (errors.ConfigError, 400, "invalid_request"),
    (errors.CloudUnavailableError, 502, "cloud_unavailable"),
    (errors.FetchError, 503, "model_unavailable"),
    (errors.ModelFileError, 503, "model_unavailable"),
    (errors.BackendUnavailableError, 503, "backend_unavailable"),
    (errors.WorkerCrashedError, 500, "worker_crashed"),
    (errors.ModelLoadError, 500, "model_load_failed"),
    (errors.InferenceError, 500, "inference_failed"),
    (errors.SwarmEdgeError, 500, "error"),
]


def classify(exc: errors.SwarmEdgeError) -> tuple[int, str]:
    """(status, code) for an error."""
    return next((status, code) for cls, status, code in STATUS if isinstance(exc, cls))


def error_body(status: int, message: str, code: str, *, kind: str | None = None, **extra: Any) -> dict:
    """An OpenAI-style error object."""
    err = {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
           "param": None, "code": code}
    if kind:
        err["swarm_error"] = kind  # the exception class, so our own client can re-raise the same error
    err.update({k: v for k, v in extra.items() if v is not None})
    return {"error": err}


def _is_ollama(path: str) -> bool:
    return path.startswith("/api/")


def _error_response(path: str, status: int, message: str, code: str, *, kind: str | None = None,
                    headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    if _is_ollama(path):
        content: dict = {"error": message}
    else:
        content = error_body(status, message, code, kind=kind, **extra)
    return JSONResponse(content, status_code=status, headers=headers)


def _swarm_error_response(path: str, exc: errors.SwarmEdgeError) -> JSONResponse:
    status, code = classify(exc)
    headers = None
    if isinstance(exc, errors.BusyError):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    extra = {}
    if isinstance(exc, errors.BudgetError):
        extra = {"needed_bytes": exc.needed, "budget_bytes": exc.budget}
    return _error_response(path, status, str(exc), code, kind=type(exc).__name__, headers=headers, **extra)


# ---------------------------------------------------------------- metrics


class Metrics:
    """Counters for /metrics, kept in the event loop's thread."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.seconds: dict[str, list[float]] = {}     # path -> [sum, count]
        self.streams_open = 0
        self.refused_peers = 0
        self.stalled_clients = 0       # connections aborted because their client stopped reading
        self.slow_clients = 0          # connections closed because a request arrived too slowly (slowloris)
        self.connections = 0           # open connections (the server's protocol counts them)
        self.max_connections: int | None = None  # past this many, requests are answered 503 (set by the server)
        self.deadlines = 0             # requests cut off by the per-request deadline
        self.started = time.time()

    def observe(self, path: str, status: int, seconds: float) -> None:
        """Count one finished request."""
        self.requests[(path, status)] = self.requests.get((path, status), 0) + 1
        acc = self.seconds.setdefault(path, [0.0, 0])
        acc[0] += seconds
        acc[1] += 1


def _labels(**kv: Any) -> str:
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in kv.items())
    return "{" + inner + "}" if inner else ""


def prometheus_text(engine: Engine, metrics: Metrics) -> str:
    """The Prometheus text exposition of requests, tokens, loads, evictions, queue and memory."""
    snap = engine.scheduler.snapshot()
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict, float]]) -> None:
        out.append(f"# HELP swarm_edge_{name} {help_}")
        out.append(f"# TYPE swarm_edge_{name} {kind}")
        for labels, value in samples:
            out.append(f"swarm_edge_{name}{_labels(**labels)} {value:g}" if isinstance(value, float)
                       else f"swarm_edge_{name}{_labels(**labels)} {value}")

    metric("requests_total", "counter", "HTTP requests answered, by path and status.",
           [({"path": p, "status": s}, n) for (p, s), n in sorted(metrics.requests.items())])
    metric("request_duration_seconds_sum", "counter", "Total seconds spent answering, by path.",
           [({"path": p}, float(v[0])) for p, v in sorted(metrics.seconds.items())])
    metric("request_duration_seconds_count", "counter", "Requests timed, by path.",
           [({"path": p}, v[1]) for p, v in sorted(metrics.seconds.items())])
    metric("tokens_generated_total", "counter", "Tokens generated, by model.",
           [({"model": m}, n) for m, n in sorted(engine.tokens.items())])
    st = snap["stats"]
    for key, help_ in [("loads", "Model loads."), ("evictions", "Models evicted to make room."),
                       ("ttl_unloads", "Models unloaded after the idle TTL."), ("crashes", "Workers that died."),
                       ("load_failures", "Loads that failed."), ("busy_rejections", "Requests refused: queue full."),
                       ("prefetches", "Loads started ahead of a plan's next step.")]:
        if key in st:
            metric(f"{key}_total", "counter", help_, [({}, st[key])])
    metric("refused_connections_total", "counter", "Unix-socket connections refused by the peer uid check.",
           [({}, metrics.refused_peers)])
    metric("stalled_connections_total", "counter", "Connections aborted: the client stopped reading.",
           [({}, metrics.stalled_clients)])
    metric("slow_connections_total", "counter", "Connections closed: a request's headers or body came too slowly.",
           [({}, metrics.slow_clients)])
    metric("request_deadlines_total", "counter", "Requests cut off by the per-request deadline.",
           [({}, metrics.deadlines)])
    metric("connections_open", "gauge", "Open client connections.", [({}, metrics.connections)])
    metric("queue_depth", "gauge", "Requests waiting for a model.", [({}, snap["waiting"])])
    metric("streams_open", "gauge", "Streamed responses in progress.", [({}, metrics.streams_open)])
    metric("memory_budget_bytes", "gauge", "The memory budget.", [({}, snap["budget"])])
    metric("memory_used_bytes", "gauge", "Bytes held against the budget (base + reservations).", [({}, snap["used"])])
    metric("memory_base_bytes", "gauge", "PSS of the daemon, forkserver and spare worker.", [({}, snap["base"])])
    metric("model_resident_bytes", "gauge", "Bytes each resident model holds (measured PSS, else reserved).",
           [({"model": r["model"]}, r["pss"] or r["reserved"]) for r in snap["residents"]])
    metric("models_resident", "gauge", "Resident models.", [({}, len(snap["residents"]))])
    if engine.cloud is not None:
        metric("cloud_calls_total", "counter", "Calls to the cloud fallback, by outcome.",
               [({"outcome": k}, v) for k, v in engine.cloud.outcomes.items()])
        metric("cloud_circuit_open", "gauge", "1 while the cloud's circuit breaker is open.",
               [({}, int(engine.cloud.breaker.state == "open"))])
    metric("uptime_seconds", "gauge", "Seconds since the daemon started.",
           [({}, round(time.time() - metrics.started, 3))])
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- the guard (body size, TCP token, metrics)


class _TooLarge(HTTPException):
    def __init__(self) -> None:
        super().__init__(413, f"request body is larger than {MAX_BODY // 1024} KiB")


class Guard:
    """Pure ASGI middleware: body-size cap, bearer token + Host allowlist on TCP, request metrics."""

    def __init__(self, app, *, metrics: Metrics, token: str | None, paths: set[str]) -> None:
        self.app, self.metrics, self.token, self.paths = app, metrics, token, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        path = scope["path"]
        status = [500]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        if scope.get("method") == "POST" and headers.get("content-type", "").split(";")[0].strip() in (
                "", "application/x-www-form-urlencoded"):
            # curl -d and many Ollama clients send JSON without saying so (Ollama accepts it): read it as JSON
            scope = dict(scope)
            scope["headers"] = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-type"] + \
                [(b"content-type", b"application/json")]
        try:
            server = scope.get("server")
            if not (server and server[0] == UNIX_PEER_CHECKED):  # fail closed: only a checked Unix peer is exempt
                refusal = self._check_tcp(headers, path)
                if refusal is not None:
                    await refusal(scope, receive, send_wrapper)
                    return
            cap = self.metrics.max_connections
            if cap is not None and self.metrics.connections > cap:
                await _error_response(path, 503, f"more than {cap} open connections; try again shortly",
                                      "server_busy", headers={"Retry-After": "1"})(scope, receive, send_wrapper)
                return
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
                status_code = 413 if length.isdigit() else 400
                msg = _TooLarge().detail if status_code == 413 else "bad Content-Length"
                await _error_response(path, status_code, msg, "request_too_large" if status_code == 413
                                      else "bad_request")(scope, receive, send_wrapper)
                return
            seen = [0]

            async def receive_wrapper():
                message = await receive()
                if message["type"] == "http.request":
                    seen[0] += len(message.get("body", b""))
                    if seen[0] > MAX_BODY:
                        raise _TooLarge()
                return message

            await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            self.metrics.observe(path if path in self.paths else "other", status[0], time.perf_counter() - t0)

    def _check_tcp(self, headers: dict[str, str], path: str):
        # the refusals take the path's error shape too: Ollama clients read {"error": str} under /api/
        host = headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name not in LOOPBACK_HOSTS:
            return _error_response(path, 403, f"Host {host!r} is not allowed (loopback names only)", "forbidden_host")
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not self.token or not hmac.compare_digest(given.encode(), self.token.encode()):
            return _error_response(path, 401, "missing or wrong bearer token", "unauthorized",
                                   headers={"WWW-Authenticate": "Bearer"})
        return None


# ---------------------------------------------------------------- streaming helpers


class ClosingStream(StreamingResponse):
    """A streamed response over a primed generation: counted as an open stream while it runs, and however it
    ends (client gone included) its body and the generation under it are closed, which frees the lease.

    The generation never waits for the client: a producer task runs it into a queue at the model's pace and the
    response sends what is queued, so a client that reads slowly or not at all (a frozen app) holds no model and
    no compute slot; only its own connection waits, and the server aborts that after its send timeout. At
    `deadline` (event-loop time) the generation is cut off and the body ends with `error_chunk(DeadlineError)`.
    """

    def __init__(self, content, *, events: AsyncIterator[dict], metrics: Metrics, deadline: float | None = None,
                 error_chunk=None, **kw) -> None:
        super().__init__(content, **kw)
        self.events, self.metrics = events, metrics
        self.deadline, self.error_chunk = deadline, error_chunk

    async def __call__(self, scope, receive, send) -> None:
        self.metrics.streams_open += 1
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.metrics.streams_open -= 1
            with contextlib.suppress(Exception):
                await self.body_iterator.aclose()
            await self.events.aclose()

    async def stream_response(self, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        queue: asyncio.Queue = asyncio.Queue()  # bounded by the answer: max_tokens small chunks
        producer = asyncio.get_running_loop().create_task(self._produce(queue))
        try:
            while True:
                chunks = [await queue.get()]
                while not queue.empty():  # a slow reader gets what piled up in one write
                    chunks.append(queue.get_nowait())
                end = chunks[-1] is None
                body = b"".join(c for c in chunks if c is not None)
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

    async def _produce(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        expired = []

        def expire() -> None:
            expired.append(True)
            task.cancel()

        timer = loop.call_at(self.deadline, expire) if self.deadline is not None else None
        try:
            async for chunk in self.body_iterator:
                queue.put_nowait(chunk if isinstance(chunk, bytes | memoryview) else chunk.encode(self.charset))
        except asyncio.CancelledError:
            if not expired:
                raise
            await self.events.aclose()  # the model is free for the next request now, not when the client reads
            self.metrics.deadlines += 1
            if self.error_chunk is not None:
                queue.put_nowait(self.error_chunk(errors.DeadlineError(_deadline_text())))
        finally:
            if timer is not None:
                timer.cancel()
            queue.put_nowait(None)


def _unreadable(cause: BaseException) -> str:
    """Why a body could not be read as JSON (FastAPI says only "There was an error parsing the body")."""
    if isinstance(cause, UnicodeDecodeError):
        return f"invalid request body: not UTF-8 (byte 0x{cause.object[cause.start]:02x} at offset {cause.start})"
    if isinstance(cause, RecursionError):
        return "invalid request body: its JSON is nested too deeply"
    return f"invalid request body: it could not be read as JSON ({type(cause).__name__})"


def _deadline_text() -> str:
    return "the request ran past the daemon's per-request deadline (serve --request-timeout); its model was freed"


async def _within(aw, deadline: float | None, metrics: Metrics):
    """Await `aw` until `deadline` (event-loop time; None: no limit), else raise DeadlineError."""
    if deadline is None:
        return await aw
    try:
        return await asyncio.wait_for(aw, max(0.0, deadline - asyncio.get_running_loop().time()))
    except asyncio.TimeoutError:
        metrics.deadlines += 1
        raise errors.DeadlineError(_deadline_text()) from None


async def _prime(events: AsyncIterator[dict], deadline: float | None, metrics: Metrics) -> dict:
    """Run a stream until its model is leased; errors before that are raised (and become HTTP errors)."""
    try:
        return await _within(events.__anext__(), deadline, metrics)
    except BaseException:
        await events.aclose()
        raise


async def _final_answer(events: AsyncIterator[dict], deadline: float | None, metrics: Metrics) -> orchestrator.Answer:
    """Run a primed stream to its end and return the Answer (for answers that are not streamed)."""
    async def run():
        async for ev in events:
            if ev["type"] == "done":
                return ev["answer"]
        raise errors.InferenceError("the answer ended without a result")  # the orchestrator always ends with one

    try:
        return await _within(run(), deadline, metrics)
    finally:
        await events.aclose()


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def ndjson_error(exc: Exception) -> bytes:
    """The NDJSON line that ends an Ollama stream with an error."""
    return _ndjson({"error": str(exc)})


def _ndjson(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _usage(answer: orchestrator.Answer) -> dict:
    prompt = answer.prompt_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": answer.tokens, "total_tokens": prompt + answer.tokens}


def _now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _ollama_name(name: str) -> str:
    return name[:-7] if name.endswith(":latest") else name


def _ns(seconds: float | None) -> int:
    return int((seconds or 0.0) * 1e9)


# ---------------------------------------------------------------- the app


def create_app(engine: Engine, *, token: str | None = None, on_ready=None,
               request_timeout: float | None = None) -> FastAPI:
    """The FastAPI app over an Engine. The lifespan starts the engine's workers and stops them all.
    `request_timeout`: seconds a generation request may take, from arrival to its last token (None: no limit)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        # off the event loop and side by side: load the router's embedding model and trained head (a request that
        # comes while the head trains routes by the rules), and read the GGUF facts of fetched models, so that
        # admission finds them cached
        def warm_router():
            why = engine.router.warm()
            if why:
                log.warning("%s", why)

        warm = asyncio.gather(asyncio.to_thread(warm_router), asyncio.to_thread(engine.model_estimates))
        if on_ready:
            on_ready()
        try:
            yield
        finally:
            warm.cancel()
            await engine.close()

    app = FastAPI(title="swarm-edge", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json")
    app.openapi = lambda: _openapi(app)
    metrics = Metrics()
    app.state.engine, app.state.metrics = engine, metrics

    @app.exception_handler(errors.SwarmEdgeError)
    async def _swarm_error(request: Request, exc: errors.SwarmEdgeError):
        return _swarm_error_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else e.get("msg", "invalid"))
        message = "invalid request body: " + "; ".join(parts[:5]) + (" ..." if len(parts) > 5 else "")
        return _error_response(request.url.path, 400, message, "invalid_request_body")

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code, "error")
        message = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
        if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI could not read the body as JSON
            code, message = "invalid_request_body", _unreadable(exc.__cause__)
        return _error_response(request.url.path, exc.status_code, message, code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error answering %s", request.url.path)
        return _error_response(request.url.path, 500, f"internal error ({type(exc).__name__}); see the daemon's log",
                               "internal_error")

    def generation(**kw) -> AsyncIterator[dict]:
        return orchestrator.stream(engine, **kw)

    def deadline() -> float | None:
        return None if not request_timeout else asyncio.get_running_loop().time() + request_timeout

    # ------------------------------------------------------------ OpenAI

    def model_card(spec) -> dict:
        return {"id": spec.id, "object": "model", "created": int(metrics.started), "owned_by": "swarm-edge",
                "swarm": {"format": spec.format, "kind": spec.kind, "tasks": spec.tasks}}

    @app.get("/v1/models", responses=responses(ModelList))
    async def list_models():
        auto = {"id": orchestrator.AUTO, "object": "model", "created": int(metrics.started), "owned_by": "swarm-edge",
                "swarm": {"kind": "router", "router": engine.router.kind, "tasks": list(engine.registry.routes)}}
        pipes = [{"id": orchestrator.PIPELINE_PREFIX + name, "object": "model", "created": int(metrics.started),
                  "owned_by": "swarm-edge",
                  "swarm": {"kind": "pipeline", "steps": p.steps, "description": p.description}}
                 for name, p in engine.registry.pipelines.items()]
        cloud = [{"id": orchestrator.CLOUD, "object": "model", "created": int(metrics.started),
                  "owned_by": "swarm-edge", "swarm": {"kind": "cloud", **engine.cloud.describe()}}] \
            if engine.cloud is not None else []
        return {"object": "list", "data": [auto] + [model_card(s) for s in engine.registry] + pipes + cloud}

    @app.get("/v1/models/{model_id:path}", responses=responses(ModelCard, 404))
    async def get_model(model_id: str):
        return model_card(engine.registry.get(model_id))

    async def openai_generation(body, kind: str, **kw):
        if body.offline and body.model == orchestrator.CLOUD:
            raise errors.ConfigError("model \"cloud\" and offline: true contradict each other")
        events = generation(model_id=body.model, temperature=body.temperature or 0.0, top_p=body.top_p or 1.0,
                            stop=body.stop, seed=body.seed, cache_prompt=body.cache_prompt,
                            fetch=False if body.offline else None,
                            allow_cloud=body.allow_cloud and not body.offline, **kw)
        until = deadline()
        start = await _prime(events, until, metrics)
        oid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        obj = "chat.completion" if kind == "chat" else "text_completion"

        def choice(text: str | None, finish: str | None) -> dict:
            if kind == "chat":
                delta = {} if text is None else {"content": text}
                return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

        if not body.stream:
            answer = await _final_answer(events, until, metrics)
            if kind == "chat":
                ch = {"index": 0, "message": {"role": "assistant", "content": answer.text}, "logprobs": None,
                      "finish_reason": answer.finish_reason}
            else:
                ch = {"index": 0, "text": answer.text, "logprobs": None, "finish_reason": answer.finish_reason}
            return {"id": oid, "object": obj, "created": created, "model": answer.model, "choices": [ch],
                    "usage": _usage(answer), "swarm": answer.trace()}

        def chunk(choices: list, **extra) -> bytes:
            return _sse({"id": oid, "object": obj + ".chunk" if kind == "chat" else obj, "created": created,
                         "model": start["model"], "choices": choices, **extra})

        # A token chunk is the same bytes around the token's JSON string: build the two halves once, not a dict
        # and a full json.dumps per token (this runs on the cores the model decodes on).
        head, marker, tail = chunk([choice("\x00", None)]).partition(b'"\\u0000"')
        assert marker, "the token placeholder must appear in the chunk template"
        dumps = json.JSONEncoder(ensure_ascii=False).encode

        async def body_iter():
            try:
                # OpenAI's first chunk carries only the role; it goes out in one write with the first token
                role = chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                               "finish_reason": None}]) if kind == "chat" else b""
                async for ev in events:
                    if ev["type"] == "token":
                        piece = head + dumps(ev["text"]).encode() + tail
                        yield role + piece if role else piece
                        role = b""
                    elif ev["type"] == "done":
                        answer = ev["answer"]
                        if role:  # no token at all
                            yield role
                        yield chunk([choice(None if kind == "chat" else "", answer.finish_reason)],
                                    swarm=answer.trace())
                        if body.include_usage:
                            yield chunk([], usage=_usage(answer))
                yield b"data: [DONE]\n\n"
            except errors.SwarmEdgeError as exc:
                yield sse_error(exc)

        def sse_error(exc: errors.SwarmEdgeError) -> bytes:
            status, code = classify(exc)
            return _sse(error_body(status, str(exc), code, kind=type(exc).__name__))

        return ClosingStream(body_iter(), events=events, metrics=metrics, deadline=until, error_chunk=sse_error,
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions", responses=responses(ChatCompletion, *GENERATION_STATUSES, stream=SSE))
    async def chat_completions(body: ChatCompletionRequest):
        return await openai_generation(body, "chat", messages=body.plain_messages(), max_tokens=body.limit)

    @app.post("/v1/completions", responses=responses(Completion, *GENERATION_STATUSES, stream=SSE))
    async def completions(body: CompletionRequest):
        return await openai_generation(body, "text", prompt=body.prompt, max_tokens=body.max_tokens)

    @app.post("/v1/embeddings", responses=responses(Embeddings, *EMBEDDING_STATUSES))
    async def embeddings(body: EmbeddingRequest):
        model, vectors, timings = await _within(orchestrator.embed(engine, body.input, body.model), deadline(),
                                                metrics)
        tokens = timings.pop("tokens", None) or 0
        data = []
        for i, vec in enumerate(vectors):
            if body.encoding_format == "base64":
                emb: Any = base64.b64encode(array.array("f", vec).tobytes()).decode()
            else:
                emb = vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return {"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "swarm": {"model": model, "timings": timings, "left_device": False}}

    # ------------------------------------------------------------ Ollama

    def ollama_details(spec) -> dict:
        model_file = spec.file("model")
        return {"name": spec.id, "model": spec.id, "modified_at": _file_time(engine, spec),
                "size": sum(f.size for f in spec.files), "digest": model_file.sha256,
                "details": {"format": spec.format, "family": spec.kind, "families": [spec.kind],
                            "parameter_size": "", "quantization_level": ""}}

    @app.get("/api/tags", responses=responses(OllamaModels))
    async def tags():
        return {"models": [ollama_details(s) for s in engine.registry]}

    @app.get("/api/ps", responses=responses(OllamaModels))
    async def ps():
        snap = engine.scheduler.snapshot()
        out = []
        for r in snap["residents"]:
            spec = engine.registry.get(r["model"])
            d = ollama_details(spec)
            d.update({"size": r["pss"] or r["reserved"], "size_vram": 0, "expires_at": _expiry(engine, r)})
            out.append(d)
        return {"models": out}

    @app.get("/api/version", responses=responses(Version))
    async def version():
        return {"version": __version__}

    async def ollama_generation(model: str, options, stream: bool, key: str, allow_cloud: bool = True, **kw):
        events = generation(model_id=_ollama_name(model), max_tokens=options.max_tokens, allow_cloud=allow_cloud,
                            temperature=options.temperature or 0.0, top_p=options.top_p or 1.0,
                            stop=options.stop, seed=options.seed, **kw)
        until = deadline()
        start = await _prime(events, until, metrics)
        name = start["model"]

        def piece(text: str) -> dict:
            base = {"model": name, "created_at": _now_rfc3339()}
            base.update({"message": {"role": "assistant", "content": text}} if key == "message" else {"response": text})
            return base

        def final(answer: orchestrator.Answer, text: str) -> dict:
            t = answer.timings
            prompt_eval = max(0.0, (t.get("ttft_s") or 0) - (t.get("files_s") or 0) - (t.get("queue_s") or 0)
                              - (t.get("load_s") or 0))
            d = piece(text)
            d.update({"done": True, "done_reason": answer.finish_reason, "total_duration": _ns(t.get("total_s")),
                      "load_duration": _ns(t.get("load_s")), "prompt_eval_count": answer.prompt_tokens or 0,
                      "prompt_eval_duration": _ns(prompt_eval), "eval_count": answer.tokens,
                      "eval_duration": _ns(max(0.0, (t.get("generate_s") or 0) - prompt_eval)),
                      "swarm": answer.trace()})
            return d

        if not stream:
            answer = await _final_answer(events, until, metrics)
            return final(answer, answer.text)

        async def body_iter():
            try:
                async for ev in events:
                    if ev["type"] == "token":
                        yield _ndjson({**piece(ev["text"]), "done": False})
                    elif ev["type"] == "done":
                        yield _ndjson(final(ev["answer"], ""))
            except errors.SwarmEdgeError as exc:
                yield ndjson_error(exc)

        return ClosingStream(body_iter(), events=events, metrics=metrics, deadline=until,
                             error_chunk=ndjson_error, media_type="application/x-ndjson")

    @app.post("/api/chat", responses=responses(OllamaAnswer, *GENERATION_STATUSES, stream=NDJSON))
    async def ollama_chat(body: OllamaChatRequest):
        messages = [{"role": m.role, "content": m.content} for m in body.messages]
        if not messages:  # Ollama loads the model and answers done: a preload
            return await ollama_load(body.model, "message")
        return await ollama_generation(body.model, body.options, body.stream, "message", body.allow_cloud,
                                       messages=messages, cache_prompt=body.cache_prompt)

    @app.post("/api/generate", responses=responses(OllamaAnswer, *GENERATION_STATUSES, stream=NDJSON))
    async def ollama_generate(body: OllamaGenerateRequest):
        if not body.prompt:
            return await ollama_load(body.model, "response")
        if body.raw:
            return await ollama_generation(body.model, body.options, body.stream, "response", body.allow_cloud,
                                           prompt=body.prompt, cache_prompt=body.cache_prompt)
        messages = ([{"role": "system", "content": body.system}] if body.system else []) + \
            [{"role": "user", "content": body.prompt}]
        return await ollama_generation(body.model, body.options, body.stream, "response", body.allow_cloud,
                                       messages=messages, cache_prompt=body.cache_prompt)

    async def ollama_load(model: str, key: str):
        spec = engine.registry.get(_ollama_name(model))
        async with engine.session(spec.id, compute=False):
            pass  # loaded (within the budget), and released at once: an idle resident until its TTL
        empty = {"role": "assistant", "content": ""} if key == "message" else ""
        return {"model": spec.id, "created_at": _now_rfc3339(), key: empty, "done": True, "done_reason": "load"}

    @app.post("/api/embed", responses=responses(OllamaEmbeddings, *EMBEDDING_STATUSES))
    async def ollama_embed(body: OllamaEmbedRequest):
        model, vectors, timings = await _within(orchestrator.embed(engine, body.input, _ollama_name(body.model)),
                                                deadline(), metrics)
        return {"model": model, "embeddings": vectors, "total_duration": _ns(timings["total_s"]),
                "load_duration": _ns(timings["load_s"]), "prompt_eval_count": timings.get("tokens") or 0}

    # ------------------------------------------------------------ swarm

    @app.get("/health", responses=responses(Health))
    async def health():
        return {"status": "ok", "version": __version__, "pid": os.getpid(),
                "uptime_s": round(time.time() - metrics.started, 3), "models": len(engine.registry)}

    @app.get("/swarm/status", responses=responses(Status))
    async def swarm_status():
        snap = engine.scheduler.snapshot()
        snap["models"] = await asyncio.to_thread(engine.model_estimates)
        snap["pid"], snap["socket"] = os.getpid(), str(engine.settings.socket_path)
        snap["streams_open"] = metrics.streams_open
        snap["cloud"] = engine.cloud.describe() if engine.cloud is not None else None
        return snap

    @app.post("/swarm/route", responses=responses(RouteOut, 400))
    async def swarm_route(body: RouteRequest):
        return (await orchestrator.route_async(engine, body.prompt)).to_dict()

    @app.get("/metrics", response_class=PlainTextResponse, responses=responses(None))
    async def prometheus():
        return PlainTextResponse(prometheus_text(engine, metrics), media_type="text/plain; version=0.0.4")

    paths = {r.path for r in app.routes if hasattr(r, "path")}
    app.add_middleware(Guard, metrics=metrics, token=token, paths=paths)
    return app


def _openapi(app: FastAPI) -> dict:
    """GET /openapi.json: FastAPI's document, finished to say what the daemon answers (built once)."""
    if app.openapi_schema is None:
        app.openapi_schema = finish_openapi(get_openapi(
            title=app.title, version=app.version, routes=app.routes,
            description="swarm-edge's daemon: OpenAI-compatible /v1, Ollama-compatible /api, and /swarm, /metrics, "
                        "/health. On the Unix socket no token is needed; the TCP listener (serve --tcp) requires "
                        "`Authorization: Bearer <token>` and a loopback Host header."))
    return app.openapi_schema


def _file_time(engine: Engine, spec) -> str:
    path = engine.settings.models_dir / spec.id / spec.file("model").name
    try:
        ts = path.stat().st_mtime
    except OSError:
        ts = time.time()
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def _expiry(engine: Engine, resident: dict) -> str:
    ttl = engine.scheduler.idle_ttl
    if not ttl or resident.get("pinned"):
        return "0001-01-01T00:00:00Z"  # what Ollama shows for "never"
    return datetime.fromtimestamp(time.time() + ttl, timezone.utc).isoformat().replace("+00:00", "Z")


__all__ = ["Guard", "Metrics", "classify", "create_app", "error_body", "prometheus_text"]
