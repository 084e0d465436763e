"""The generation endpoints' requests go straight to their handlers, past FastAPI's routing, dependency solving and
response serialization: 0.1-0.2 ms of every request's time to first token on a 2-core machine
(benchmarks/bench_fixed_path.py, "client to the model call"). Everything a client can see stays FastAPI's:

- the same handler, given the same arguments: the Request and its body read as JSON (`json.loads`) and validated
  by the handler's own body model, as FastAPI does it;
- a body that is not JSON or does not validate goes on to FastAPI, bytes replayed, which answers it as always;
- an error the handler raises is answered by the app's own exception handler for it (errors.py); any other
  exception goes up to the server error middleware, as it did from a route;
- an answer that is not a Response is FastAPI's JSON answer (`jsonable_encoder`, then JSONResponse).

Which endpoints: HOT. Each must be a POST route whose endpoint takes exactly (request: Request, body: <a pydantic
model>) and nothing FastAPI would add (dependencies, a response model, class or status code); `HotPaths.of`
checks that when the app is built and refuses to start otherwise. Exception handlers keyed by a status code are not
consulted (the app has none).
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import Request
from fastapi.datastructures import DefaultPlaceholder
from fastapi.encoders import jsonable_encoder
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

HOT = ("/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate")
Handler = Callable[[Request, Any], Awaitable[Any]]


def _content_type(scope: dict) -> bytes:
    for key, value in scope.get("headers", ()):
        if key.lower() == b"content-type":
            return value.split(b";")[0].strip().lower()
    return b""


class HotPaths:
    """ASGI middleware (the innermost of the app's own: inside Guard, outside FastAPI's exception middleware)."""

    def __init__(self, app: Any, *, routes: dict[str, tuple[type[BaseModel], Handler]]) -> None:
        self.app, self.routes = app, routes
        self.served = self.passed = 0  # requests answered here / hot-path requests handed on to FastAPI

    @staticmethod
    def of(routes: Iterable[Any], paths: tuple[str, ...] = HOT) -> dict[str, tuple[type[BaseModel], Handler]]:
        """The (body model, endpoint) of each path's POST route among `routes`; ValueError if one is missing, takes
        anything but (request, body), or has what this middleware would skip (dependencies, a response model,
        class or status code of its own)."""
        found: dict[str, tuple[type[BaseModel], Handler]] = {}
        for route in routes:
            if isinstance(route, APIRoute) and route.path in paths and "POST" in (route.methods or ()):
                params = list(inspect.signature(route.endpoint).parameters)
                hints = typing.get_type_hints(route.endpoint)
                model = hints.get(params[-1]) if len(params) == 2 else None
                if hints.get(params[0]) is not Request or not (isinstance(model, type) and
                                                               issubclass(model, BaseModel)):
                    raise ValueError(f"POST {route.path}: a hot path's endpoint takes (request: Request, body: Model)")
                plain = isinstance(route.response_class, DefaultPlaceholder) and route.status_code in (None, 200)
                if route.dependencies or route.dependant.dependencies or route.response_model is not None or not plain:
                    raise ValueError(f"POST {route.path}: a hot path cannot have dependencies, a response model, "
                                     "class or status code (this middleware would skip them)")
                found[route.path] = (model, route.endpoint)
        missing = set(paths) - set(found)
        if missing:
            raise ValueError(f"no POST route for hot path(s) {sorted(missing)}")
        return found

    async def __call__(self, scope, receive, send) -> None:
        hit = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if hit is None or _content_type(scope) != b"application/json":
            return await self.app(scope, receive, send)
        request = Request(scope, receive, send)
        chunks: list[bytes] = []
        try:
            while True:
                message = await receive()  # Guard's body cap raises TooLarge here, as it did in FastAPI's read
                if message["type"] != "http.request":  # the client left mid-body: FastAPI answers that (400)
                    return await self._hand_on(scope, receive, send, b"".join(chunks), message)
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
        except Exception as exc:  # noqa: BLE001 - answered as a route's error would be
            return await (await self._error_answer(scope, request, exc))(scope, receive, send)
        raw = b"".join(chunks)
        model, handler = hit
        try:
            body = model.model_validate(json.loads(raw))
        except Exception:  # noqa: BLE001 - not JSON, too deep, invalid: FastAPI answers it, with its own messages
            return await self._hand_on(scope, receive, send, raw)
        self.served += 1
        try:
            answer = await handler(request, body)
        except Exception as exc:  # noqa: BLE001 - answered by the app's handler for it, or raised as from a route
            answer = await self._error_answer(scope, request, exc)
        if not isinstance(answer, Response):
            answer = JSONResponse(jsonable_encoder(answer))
        await answer(scope, receive, send)

    async def _hand_on(self, scope, receive, send, raw: bytes, then: dict | None = None) -> None:
        """FastAPI answers this request: the body read so far replayed (then the message that ended it, if any)."""
        self.passed += 1
        replay = [{"type": "http.request", "body": raw, "more_body": then is not None}] + ([then] if then else [])

        async def again():
            return replay.pop(0) if replay else await receive()

        await self.app(scope, again, send)

    @staticmethod
    async def _error_answer(scope, request: Request, exc: Exception) -> Response:
        handlers = scope["app"].exception_handlers
        for cls in type(exc).__mro__:
            if cls is Exception:
                break  # the server error middleware's (it logs, then answers 500)
            if cls in handlers:
                answer = handlers[cls](request, exc)
                return await answer if inspect.isawaitable(answer) else answer
        raise exc


__all__ = ["HOT", "HotPaths"]
