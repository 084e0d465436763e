"""The cloud fallback: any OpenAI-compatible endpoint, off unless configured, private, bounded, audited.

- Configured by models.yaml's `cloud:` section and/or `SWARM_EDGE_CLOUD_URL` / `SWARM_EDGE_CLOUD_MODEL`
  (the environment wins); without both a URL and a model there is no client at all. Offline (`--offline`,
  `offline: true`) means `make_client` returns None before anything is built: no socket can be opened.
- The key comes from `SWARM_EDGE_CLOUD_API_KEY` (removed from this process's environment as soon as it is
  read, so no worker inherits it) or from a 0600 file of ours. It goes into one HTTP header and nowhere
  else: messages, traces and the audit log never carry it, and error texts are scrubbed of it.
- Every request passes the privacy gate (redact.py) first; the answer's placeholders are restored as it
  streams. The trace says which kinds were redacted.
- Deadlines: connect and read (per chunk) through httpx2, plus a total deadline over every await,
  retries included. At most `retries` retries, only before the first token (a streamed token cannot be
  taken back), on connection errors, timeouts, 429 and 5xx, with full-jitter back-off or the server's
  Retry-After. A circuit breaker opens after `breaker_failures` failed calls in a row and lets one probe
  through after `breaker_reset_s`.
- Each call that left the device appends one JSON line to HOME/audit/cloud.jsonl (0600): time, reason,
  endpoint host, model, bytes sent, sha256 of the redacted request, redacted kinds, attempts, outcome.
  If that file cannot be opened, nothing is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarm_edge import cloud_wire
from swarm_edge.cloud_config import (  # noqa: F401  (re-exported: the configuration's public names)
    KEY_ENV,
    CloudConfig,
    cloud_policy,
    load_key,
    make_undumpable,
    wipe_from_environ_block,
)
from swarm_edge.cloud_wire import (  # noqa: F401  (retry_after_seconds, backoff_delay: re-exported)
    MAX_JSON_ANSWER,
    RETRY_STATUS,
    _error_text,
    _json_completion,
    _read_capped,
    _Retryable,
    backoff_delay,
    retry_after_seconds,
)
from swarm_edge.errors import CloudUnavailableError
from swarm_edge.redact import Redactor


class CircuitBreaker:
    """closed -> open after `failures` failed calls in a row -> half-open (one probe) after `reset_s`."""

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures, self.reset_s, self.clock = failures, reset_s, clock
        self.consecutive = 0
        self.opened_at: float | None = None
        self.probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.reset_s else "open"

    def allow(self) -> None:
        """Raise CloudUnavailableError unless a call may go out now (in half-open: only one probe at a time)."""
        state = self.state
        if state == "open" or (state == "half-open" and self.probing):
            wait = max(0.0, self.reset_s - (self.clock() - (self.opened_at or 0.0))) if state == "open" else 0.0
            raise CloudUnavailableError(
                f"circuit open after {self.consecutive} failed cloud calls in a row"
                + (f"; next probe in {wait:.0f} s" if state == "open" else "; a probe is in flight"),
                breaker=True)
        if state == "half-open":
            self.probing = True

    def success(self) -> None:
        self.consecutive, self.opened_at, self.probing = 0, None, False

    def failure(self) -> None:
        self.consecutive += 1
        self.probing = False
        if self.opened_at is not None or self.consecutive >= self.failures:
            self.opened_at = self.clock()  # (re)open: a failed probe starts a new wait


@dataclass
class CloudResult:
    """What one cloud call did (the trace's `escalation` and the step)."""

    model: str
    finish_reason: str = "stop"
    attempts: int = 0
    bytes_sent: int = 0
    left_device: bool = False
    redacted: dict[str, int] = field(default_factory=dict)
    ttft_s: float | None = None
    total_s: float | None = None
    tokens: int = 0
    usage: dict[str, Any] = field(default_factory=dict)
    statuses: list[int] = field(default_factory=list)
    retry_after: float | None = None  # from the last 429/503, for the next attempt
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # [{id, name, arguments (JSON text)}]


class CloudClient:
    """Streams chat completions from the configured endpoint (module docstring: the guarantees)."""

    def __init__(self, config: CloudConfig, key: str | None, audit_path: Path, *,
                 clock: Callable[[], float] = time.monotonic, rng: Callable[[], float] = random.random,
                 transport=None) -> None:
        import httpx2

        self.config, self._key, self.audit_path = config, key, audit_path
        self.clock, self.rng = clock, rng
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_reset_s, clock)
        self.outcomes: dict[str, int] = {"ok": 0, "failed": 0, "cancelled": 0, "refused_open_circuit": 0}
        self._httpx = httpx2
        self._client = httpx2.AsyncClient(
            base_url=config.base_url, transport=transport,
            timeout=httpx2.Timeout(connect=config.connect_timeout_s, read=config.read_timeout_s,
                                   write=config.read_timeout_s, pool=config.connect_timeout_s))

    def __repr__(self) -> str:  # never the key
        return f"CloudClient({self.config.base_url!r}, model={self.config.model!r}, breaker={self.breaker.state})"

    def describe(self) -> dict[str, Any]:
        """What /v1/models and /swarm/status show: model, host, breaker state, calls by outcome (never the key)."""
        return {"model": self.config.model, "host": self.config.host, "breaker": self.breaker.state,
                "calls": dict(self.outcomes)}

    async def aclose(self) -> None:
        await self._client.aclose()

    def scrub(self, text: str) -> str:
        """`text` with the key replaced by [key] (for errors and the audit log)."""
        return text.replace(self._key, "[key]") if self._key else text

    def _headers(self) -> dict[str, str]:
        h = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if self._key:
            h["Authorization"] = f"Bearer {self._key}"
        return h

    def _open_audit(self):
        path = self.audit_path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8")

    async def stream_chat(self, messages: list[dict[str, str]], *, reason: str, max_tokens: int | None = None,
                          temperature: float = 0.0, top_p: float = 1.0, stop: list[str] | None = None,
                          seed: int | None = None, result: CloudResult | None = None,
                          response_format: dict[str, Any] | None = None,
                          tools: dict[str, Any] | None = None) -> AsyncGenerator[str, None]:
        """Yield the answer's text as it streams (placeholders restored); fill `result` as it goes.

        Raises CloudUnavailableError (its text free of the key) when the call fails; `result.tokens` says
        whether any text had been yielded before that.
        """
        res = result if result is not None else CloudResult(self.config.model)
        res.model = self.config.model
        t0 = self.clock()
        deadline = t0 + self.config.total_timeout_s
        try:
            self.breaker.allow()
        except CloudUnavailableError:
            self.outcomes["refused_open_circuit"] += 1
            raise
        redactor = Redactor()
        payload = await self._payload(messages, redactor, res, max_tokens, temperature, top_p, stop, seed,
                                      response_format, tools)
        try:
            audit = self._open_audit()
        except OSError as exc:
            raise CloudUnavailableError(f"not sending: the audit log {self.audit_path} cannot be written "
                                        f"({exc.strerror})") from None
        outcome = "ok"
        try:
            # every nested generator is closed here, in order: left to the garbage collector, httpx2's stream
            # generators get closed out of order ("aclose(): asynchronous generator is already running")
            async with contextlib.aclosing(self._attempts(payload, res, deadline, redactor, t0)) as texts:
                async for text in texts:
                    yield text
        except CloudUnavailableError as exc:
            outcome = str(exc)
            self.breaker.failure()
            self.outcomes["failed"] += 1
            raise
        except BaseException:
            outcome = "cancelled by the caller"
            self.outcomes["cancelled"] += 1
            raise
        else:
            self.breaker.success()
            self.outcomes["ok"] += 1
        finally:
            res.total_s = round(self.clock() - t0, 4)
            self._audit(audit, res, reason, payload, outcome)

    async def _payload(self, messages: list[dict[str, str]], redactor: Redactor, res: CloudResult,
                       max_tokens: int | None, temperature: float, top_p: float, stop: list[str] | None,
                       seed: int | None, response_format: dict[str, Any] | None = None,
                       tools: dict[str, Any] | None = None) -> bytes:
        """The request body, through the privacy gate (pure CPU, up to ~1 s per MiB of hostile text: off the event
        loop; redact_all also removes a secret split across two messages from both)."""
        contents = await asyncio.to_thread(redactor.redact_all, [m.get("content") or "" for m in messages])
        sent = [cloud_wire.sent_message(m, c, redactor) for m, c in zip(messages, contents, strict=True)]
        res.redacted = redactor.summary()
        body: dict[str, Any] = {"model": self.config.model, "messages": sent, "stream": True,
                                "max_tokens": min(max_tokens or self.config.max_tokens, self.config.max_tokens),
                                "temperature": temperature, "top_p": top_p}
        if stop:
            body["stop"] = [redactor.redact(s) for s in stop]
        if seed is not None:
            body["seed"] = seed
        # OpenAI's own shapes (OutputFormat.openai; Toolset.wire: tools, tool_choice, parallel_tool_calls)
        body.update({"response_format": response_format} if response_format else {}, **(tools or {}))
        return json.dumps(body, ensure_ascii=False).encode()

    def _audit(self, audit, res: CloudResult, reason: str, payload: bytes, outcome: str) -> None:
        """One line per call that left the device; then the file is closed."""
        if res.left_device:
            entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "reason": reason, "host": self.config.host,
                     "model": self.config.model, "bytes_sent": res.bytes_sent,
                     "request_sha256": hashlib.sha256(payload).hexdigest(), "redacted": res.redacted,
                     "attempts": res.attempts, "statuses": res.statuses, "tokens": res.tokens,
                     "outcome": self.scrub(outcome)[:300]}
            try:
                audit.write(json.dumps(entry) + "\n")
                audit.flush()
            except OSError:
                pass  # a full disk after the call: the call happened; the error is in the daemon log
        audit.close()

    async def _attempts(self, payload: bytes, res: CloudResult, deadline: float, redactor: Redactor,
                        t0: float) -> AsyncGenerator[str, None]:
        httpx2 = self._httpx
        last_error = "no attempt made"
        for attempt in range(self.config.retries + 1):
            if attempt:
                delay = res.retry_after if res.retry_after is not None else backoff_delay(attempt - 1, self.rng)
                res.retry_after = None
                if self.clock() + delay >= deadline:
                    raise CloudUnavailableError(f"{last_error}; no time left for a retry within the "
                                                f"{self.config.total_timeout_s:g} s deadline")
                await asyncio.sleep(delay)
            res.attempts = attempt + 1
            try:
                async with contextlib.aclosing(self._one(payload, res, deadline, redactor, t0)) as texts:
                    async for text in texts:
                        yield text
                return
            except _Retryable as exc:
                last_error = self.scrub(str(exc))
                if res.tokens:  # text already shown cannot be taken back
                    raise CloudUnavailableError(f"the cloud stream broke after {res.tokens} chunks: {last_error}",
                                                partial=True) from None
            except httpx2.HTTPError as exc:  # anything else httpx2 raises (protocol errors): not retried
                raise CloudUnavailableError(self.scrub(f"{type(exc).__name__}: {exc}")) from None
        raise CloudUnavailableError(f"{last_error} (after {res.attempts} attempts)")

    async def _within(self, aw, what: str, res: CloudResult, deadline: float):
        """Await one step of an attempt within the total deadline; its failures become _Retryable."""
        httpx2 = self._httpx
        left = deadline - self.clock()
        if left <= 0:
            raise _Retryable(f"total deadline of {self.config.total_timeout_s:g} s passed ({what})")
        try:
            return await asyncio.wait_for(aw, left)
        except asyncio.TimeoutError:
            raise _Retryable(f"total deadline of {self.config.total_timeout_s:g} s passed ({what})") from None
        except httpx2.ConnectError as exc:
            raise _Retryable(f"cannot connect to {self.config.host}: {exc}") from None
        except httpx2.ConnectTimeout:
            raise _Retryable(f"connect timeout ({self.config.connect_timeout_s:g} s) to {self.config.host}") from None
        except httpx2.ReadTimeout:
            res.left_device = True
            raise _Retryable(f"read timeout: nothing from {self.config.host} for "
                             f"{self.config.read_timeout_s:g} s ({what})") from None
        except (httpx2.ReadError, httpx2.RemoteProtocolError, httpx2.WriteError) as exc:
            res.left_device = True
            raise _Retryable(f"{type(exc).__name__} from {self.config.host}: {exc}") from None

    async def _one(self, payload: bytes, res: CloudResult, deadline: float, redactor: Redactor,
                   t0: float) -> AsyncGenerator[str, None]:
        """One attempt: send, check the status, then read a JSON completion or the event stream."""
        request = self._client.build_request("POST", "/chat/completions", content=payload, headers=self._headers())
        res.bytes_sent += len(payload)
        res.tool_calls = []  # a retried attempt starts its calls afresh
        response = await self._within(self._client.send(request, stream=True), "waiting for the response", res,
                                      deadline)
        res.left_device = True
        try:
            res.statuses.append(response.status_code)
            if response.status_code != 200:
                body = await self._within(response.aread(), "reading the error body", res, deadline)
                why = _error_text(body.decode("utf-8", "replace"))
                msg = f"HTTP {response.status_code} from {self.config.host}: {why}"
                if response.status_code in RETRY_STATUS:
                    res.retry_after = retry_after_seconds(response.headers.get("retry-after"))
                    raise _Retryable(msg)
                raise CloudUnavailableError(self.scrub(msg))
            ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype == "application/json" or ctype.endswith("+json"):
                # several OpenAI-compatible proxies ignore `stream` and answer with one JSON completion
                raw = await self._within(_read_capped(response, MAX_JSON_ANSWER), "reading the answer", res, deadline)
                text = redactor.restore(_json_completion(raw, ctype, res, self.config.host))
                cloud_wire.restore_calls(res, redactor)
                res.ttft_s = round(self.clock() - t0, 4)
                n = (res.usage or {}).get("completion_tokens")
                res.tokens += n if isinstance(n, int) and n > 0 else 1
                yield text
                return
            async with contextlib.aclosing(self._events(response, res, deadline, redactor, t0)) as texts:
                async for text in texts:
                    yield text
        finally:
            await response.aclose()

    async def _events(self, response, res: CloudResult, deadline: float, redactor: Redactor,
                      t0: float) -> AsyncGenerator[str, None]:
        """The text of an event stream, placeholders restored as it comes; HTTP 200 without text is a failure."""
        restorer = redactor.restorer()
        lines = response.aiter_lines().__aiter__()
        try:
            while True:
                try:
                    line = await self._within(lines.__anext__(), "streaming the answer", res, deadline)
                except StopAsyncIteration:
                    break
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    event = json.loads(data)
                except ValueError:
                    raise CloudUnavailableError(f"the cloud sent a line that is not JSON: {data[:80]!r}") from None
                if event.get("usage"):
                    res.usage = event["usage"]
                for choice in event.get("choices") or []:
                    cloud_wire.add_calls(res, (choice.get("delta") or {}).get("tool_calls"))
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        text = restorer.feed(delta)
                        if res.ttft_s is None:
                            res.ttft_s = round(self.clock() - t0, 4)
                        res.tokens += 1
                        if text:
                            yield text
                    if choice.get("finish_reason"):
                        res.finish_reason = choice["finish_reason"]
        finally:  # close the line iterator here, not at garbage collection (an error there)
            with contextlib.suppress(RuntimeError, self._httpx.HTTPError):
                await lines.aclose()
        tail = restorer.flush()
        cloud_wire.restore_calls(res, redactor)  # placeholders in calls' arguments: put back once they are whole
        if tail:
            yield tail
        if not res.tokens and not res.tool_calls:  # HTTP 200 and no text is not an answer: the local one stands
            raise CloudUnavailableError(f"{self.config.host} streamed no answer text "
                                        f"(finish_reason {res.finish_reason!r})")


def make_client(registry, settings):
    """The engine's cloud client, or None: offline, or not configured (then nothing is built at all).

    The client is the egress process's (egress.py): this process, which parses model files, never holds the key.
    The key is taken out of this process's environment (and its environment block) either way, so no worker
    inherits it."""
    from swarm_edge.egress import EgressClient, start

    key = settings.cloud_key or settings.env.get(KEY_ENV)
    wipe_from_environ_block(KEY_ENV)
    os.environ.pop(KEY_ENV, None)  # offline or not: no worker may inherit it
    if settings.offline or registry.offline:
        return None
    config = CloudConfig.resolve(registry.cloud, settings.env)
    if config is None:
        return None
    inherited = EgressClient.inherited(config, os.environ)  # `serve` started it, then ran again without the key
    if inherited is not None:
        return inherited
    audit = settings.home / "audit" / "cloud.jsonl"
    return EgressClient(config, starter=lambda: start(config, key, audit))  # started by the first cloud call


__all__ = ["CircuitBreaker", "CloudClient", "CloudConfig", "CloudResult", "backoff_delay", "cloud_policy",
           "load_key", "make_client", "make_undumpable", "retry_after_seconds", "wipe_from_environ_block"]
