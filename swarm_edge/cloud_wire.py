"""What the cloud endpoint answers, read carefully: Retry-After, back-off, a non-streamed JSON completion (some
proxies ignore `stream`), an error body's message, and the mark of a failed attempt that may be retried."""

from __future__ import annotations

import email.utils
import json
import random
import time
from collections.abc import Callable
from typing import Any

from swarm_edge.errors import CloudUnavailableError

RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
MAX_JSON_ANSWER = 8 << 20  # a non-streamed answer is read whole: bounded


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, rng: Callable[[], float] = random.random, base: float = 0.5, cap: float = 8.0) -> float:
    """Full-jitter exponential back-off before retry number `attempt` (0-based)."""
    return rng() * min(cap, base * 2 ** attempt)


async def _read_capped(response, cap: int) -> bytes:
    """The whole body, or CloudUnavailableError once it passes `cap` bytes."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > cap:
            raise CloudUnavailableError(f"the cloud's answer is larger than {cap // 2**20} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_completion(raw: bytes, ctype: str, res: Any, host: str) -> str:
    """The answer text of a non-streamed chat.completion body (filling `res`), or CloudUnavailableError."""
    try:
        obj = json.loads(raw)
    except ValueError:
        raise CloudUnavailableError(f"{host} answered with {ctype or 'no content type'}, neither an event stream "
                                    f"nor JSON: {raw[:80]!r}") from None
    if not isinstance(obj, dict):
        raise CloudUnavailableError(f"{host} answered with JSON that is not a chat completion")
    if obj.get("error"):
        why = _error_text(raw.decode("utf-8", "replace"))
        raise CloudUnavailableError(f"{host} answered HTTP 200 with an error: {why}")
    choices = obj.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else None
    text = (message or {}).get("content")
    calls = (message or {}).get("tool_calls")
    if isinstance(calls, list) and calls:
        res.tool_calls = [{"id": c.get("id"), "name": (c.get("function") or {}).get("name") or "",
                           "arguments": (c.get("function") or {}).get("arguments") or "{}"}
                          for c in calls if isinstance(c, dict)]
        text = text if isinstance(text, str) else ""
    elif not isinstance(text, str) or not text:
        raise CloudUnavailableError(f"{host} answered HTTP 200 without answer text")
    if isinstance(obj.get("usage"), dict):
        res.usage = obj["usage"]
    if isinstance(choice.get("finish_reason"), str):
        res.finish_reason = choice["finish_reason"]
    return text


class _Retryable(Exception):
    """A failed attempt that may be retried (connection, timeout, 429, 5xx)."""


def _error_text(body: str) -> str:
    try:
        err = json.loads(body).get("error")
        if isinstance(err, dict):
            return str(err.get("message") or err)[:200]
        if err:
            return str(err)[:200]
    except (ValueError, AttributeError):
        pass
    return body.strip()[:200] or "(empty body)"


def sent_message(message: dict[str, Any], content: str, redactor: Any) -> dict[str, Any]:
    """A message as sent: its redacted content, and its tool calls' arguments redacted too."""
    out: dict[str, Any] = {"role": message.get("role", "user"), "content": content}
    if message.get("tool_calls"):
        out["tool_calls"] = [{**c, "function": {**c["function"], "arguments": redactor.redact(
            c["function"].get("arguments") or "{}")}} for c in message["tool_calls"]]
    if message.get("tool_call_id"):
        out["tool_call_id"] = message["tool_call_id"]
    return out


def add_calls(res: Any, deltas: Any) -> None:
    """Streamed tool calls come in pieces by index: the id and name first, then fragments of the arguments.
    A piece that is not what OpenAI sends is a broken stream."""
    for d in deltas if isinstance(deltas, list) else ():
        fn = d.get("function") if isinstance(d, dict) else None
        i = d.get("index", max(0, len(res.tool_calls) - 1)) if isinstance(d, dict) else None
        if not isinstance(fn, (dict, type(None))) or not isinstance(i, int) or not 0 <= i < 128:
            raise CloudUnavailableError(f"the cloud sent a malformed tool call piece: {str(d)[:80]}")
        fn = fn or {}
        if not all(isinstance(fn.get(k) or "", str) for k in ("name", "arguments")):
            raise CloudUnavailableError(f"the cloud sent a malformed tool call piece: {str(d)[:80]}")
        while len(res.tool_calls) <= i:
            res.tool_calls.append({"id": None, "name": "", "arguments": ""})
        call = res.tool_calls[i]
        call["id"] = d.get("id") or call["id"]
        call["name"] += fn.get("name") or ""
        call["arguments"] += fn.get("arguments") or ""


def restore_calls(res: Any, redactor: Any) -> None:
    """Put the redactor's placeholders back inside the string values of each call's arguments (a restored value
    may hold quotes or newlines, which a text replacement would leave as broken JSON)."""
    def restored(value: Any) -> Any:
        if isinstance(value, str):
            return redactor.restore(value)
        if isinstance(value, list):
            return [restored(v) for v in value]
        if isinstance(value, dict):
            return {restored(k): restored(v) for k, v in value.items()}
        return value

    for call in res.tool_calls:
        try:
            call["arguments"] = json.dumps(restored(json.loads(call["arguments"] or "{}")), ensure_ascii=False)
        except ValueError:  # not JSON: left as it came (the call is then invalid for its schema)
            call["arguments"] = redactor.restore(call["arguments"])
