"""Errors at the HTTP boundary: each exception class maps to one status, and each family of paths owns its error
shape (OpenAI's error object; Ollama's {"error": str} under /api/). FastAPI has no per-router exception handlers,
so the app-level handlers and the middleware's refusals look the shape up by path prefix in ERROR_FORMATS."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from swarm_edge import errors

log = logging.getLogger("swarm_edge.api")

# exception -> (HTTP status, OpenAI error code); the first match wins, so subclasses come first
STATUS: list[tuple[type[errors.SwarmEdgeError], int, str]] = [
    (errors.UnknownModelError, 404, "model_not_found"),
    (errors.ContextLengthError, 400, "context_length_exceeded"),
    (errors.BudgetError, 507, "insufficient_memory"),
    (errors.BusyError, 503, "server_busy"),
    (errors.DeadlineError, 504, "request_timeout"),
    (errors.ConfigError, 400, "invalid_request"),
    (errors.CloudUnavailableError, 502, "cloud_unavailable"),
    (errors.ClientGoneError, 499, "client_gone"),  # nobody reads it: for logs and metrics
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


def ollama_body(status: int, message: str, code: str, *, kind: str | None = None, **extra: Any) -> dict:
    """Ollama's error shape: its clients read one string."""
    return {"error": message}


ErrorFormat = Callable[..., dict]
# (path prefix, error shape): the first match wins; every other path answers OpenAI's shape
ERROR_FORMATS: list[tuple[str, ErrorFormat]] = [("/api/", ollama_body)]


def error_format(path: str) -> ErrorFormat:
    return next((fmt for prefix, fmt in ERROR_FORMATS if path.startswith(prefix)), error_body)


def error_response(path: str, status: int, message: str, code: str, *, kind: str | None = None,
                   headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """The error answer for a request to `path`, in that path's shape."""
    return JSONResponse(error_format(path)(status, message, code, kind=kind, **extra), status_code=status,
                        headers=headers)


def swarm_error_response(path: str, exc: errors.SwarmEdgeError) -> JSONResponse:
    status, code = classify(exc)
    headers = None
    if isinstance(exc, errors.BusyError):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    extra = {}
    if isinstance(exc, errors.BudgetError):
        extra = {"needed_bytes": exc.needed, "budget_bytes": exc.budget}
    return error_response(path, status, str(exc), code, kind=type(exc).__name__, headers=headers, **extra)


def unreadable(cause: BaseException) -> str:
    """Why a body could not be read as JSON (FastAPI says only "There was an error parsing the body")."""
    if isinstance(cause, UnicodeDecodeError):
        return f"invalid request body: not UTF-8 (byte 0x{cause.object[cause.start]:02x} at offset {cause.start})"
    if isinstance(cause, RecursionError):
        return "invalid request body: its JSON is nested too deeply"
    return f"invalid request body: it could not be read as JSON ({type(cause).__name__})"


def invalid_body_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else e.get("msg", "invalid"))
    return "invalid request body: " + "; ".join(parts[:5]) + (" ..." if len(parts) > 5 else "")


async def _swarm_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.SwarmEdgeError)
    return swarm_error_response(request.url.path, exc)


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(request.url.path, 400, invalid_body_message(exc), "invalid_request_body")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code, "error")
    message = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
    if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI could not read the body as JSON
        code, message = "invalid_request_body", unreadable(exc.__cause__)
    return error_response(request.url.path, exc.status_code, message, code)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error answering %s", request.url.path)
    return error_response(request.url.path, 500, f"internal error ({type(exc).__name__}); see the daemon's log",
                          "internal_error")


def install_handlers(app: FastAPI) -> None:
    """Every error a handler raises becomes its path's error shape."""
    app.add_exception_handler(errors.SwarmEdgeError, _swarm_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal)


__all__ = ["ERROR_FORMATS", "STATUS", "classify", "error_body", "error_response", "install_handlers",
           "ollama_body", "swarm_error_response"]
