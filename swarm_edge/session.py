"""A library session: ask, route and status through the running daemon or in this process, one interface.

The CLI is a thin layer over it; an application can use it the same way:

    with open_session(settings, registry) as s:
        answer = s.ask([{"role": "user", "content": "hello"}], on_token=print)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from swarm_edge.orchestration.answer import Answer

if TYPE_CHECKING:
    from swarm_edge.config import Settings
    from swarm_edge.registry import Registry

OnToken = Callable[[str], None]


class Session(Protocol):
    via: str  # "daemon" or "in-process"

    def ask(self, messages: list[dict[str, str]], *, model: str | None = None, max_tokens: int | None = None,
            temperature: float = 0.0, offline: bool = False, on_token: OnToken | None = None) -> Answer: ...

    def route(self, text: str) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def chat_body(messages: list[dict], model: str | None, max_tokens: int | None, temperature: float,
              offline: bool) -> dict:
    """The daemon request of one answer (usage asked for: the trace comes with the last chunk)."""
    body: dict[str, Any] = {"model": model or "auto", "messages": messages, "temperature": temperature,
                            "stream_options": {"include_usage": True}}
    if max_tokens:
        body["max_tokens"] = max_tokens
    if offline:
        body["offline"] = True
    return body


class DaemonSession:
    """Through the running daemon (its socket)."""

    via = "daemon"

    def __init__(self, client: Any) -> None:
        self.client = client

    def ask(self, messages: list[dict[str, str]], *, model: str | None = None, max_tokens: int | None = None,
            temperature: float = 0.0, offline: bool = False, on_token: OnToken | None = None) -> Answer:
        parts: list[str] = []
        trace: dict = {}
        finish = "stop"
        for chunk in self.client.stream("/v1/chat/completions", chat_body(messages, model, max_tokens, temperature,
                                                                           offline)):
            for choice in chunk.get("choices", []):
                text = choice.get("delta", {}).get("content")
                if text:
                    parts.append(text)
                    if on_token:
                        on_token(text)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
            if "swarm" in chunk:
                trace = chunk["swarm"]
        return Answer.from_trace(trace or {"model": "", "route": {}}, "".join(parts), finish)

    def route(self, text: str) -> dict[str, Any]:
        return self.client.post("/swarm/route", {"prompt": text})

    def status(self) -> dict[str, Any]:
        return self.client.get("/swarm/status")

    def close(self) -> None:
        self.client.close()


class LocalSession:
    """In this process. `keep`: one engine (and its workers) for the whole session, so models stay loaded between
    answers (a chat); else each answer has an engine of its own, without a spare worker (one-shot)."""

    via = "in-process"

    def __init__(self, registry: Registry, settings: Settings, *, budget: str | None = None, keep: bool = False,
                 progress_factory: Any = None) -> None:
        self.registry, self.settings, self.budget, self.keep = registry, settings, budget, keep
        self.progress_factory = progress_factory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._engine: Any = None
        self._router: Any = None
        if keep:  # a chat: its engine and workers now, so a bad budget or configuration fails here, not per turn
            self._run(lambda engine: asyncio.sleep(0))

    def _engine_for_a_call(self) -> Any:
        from swarm_edge.engine import Engine

        if self._engine is not None and self.keep:
            return self._engine
        engine = Engine(self.registry, self.settings, budget=self.budget, spare=self.keep)
        if self.keep:
            assert self._loop is not None
            try:
                self._loop.run_until_complete(engine.start())
            except BaseException:
                self._loop.run_until_complete(engine.close())
                raise
            self._engine = engine
        return engine

    def _run(self, coro_fn: Callable[[Any], Any]) -> Any:
        """Run `coro_fn(engine)` on this session's loop; Ctrl-C cancels it (and its model call) cleanly."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        loop = self._loop
        engine = self._engine_for_a_call()

        async def run() -> Any:
            try:
                return await coro_fn(engine)
            finally:
                if not self.keep:
                    await engine.close()

        task = loop.create_task(run())
        # Ctrl-C cancels the task (its model call and lease are released in order), as asyncio.run does, instead of
        # landing as a KeyboardInterrupt inside whichever task step is running
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
            loop.add_signal_handler(signal.SIGINT, task.cancel)
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None
        finally:
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.remove_signal_handler(signal.SIGINT)

    def ask(self, messages: list[dict[str, str]], *, model: str | None = None, max_tokens: int | None = None,
            temperature: float = 0.0, offline: bool = False, on_token: OnToken | None = None) -> Answer:
        from swarm_edge import orchestrator

        def answer(engine: Any):
            return orchestrator.answer_of(orchestrator.stream(
                engine, messages=messages, model_id=model, max_tokens=max_tokens, temperature=temperature,
                progress_factory=self.progress_factory, fetch=False if offline else None), on_token)
        return self._run(answer)

    def route(self, text: str) -> dict[str, Any]:
        from swarm_edge.router_host import local_router

        if self._router is None:
            self._router = local_router(self.registry, self.settings)  # never downloads
        return self._router.route(text).to_dict()

    def status(self) -> dict[str, Any]:
        """A fresh engine's view: nothing resident, each model's estimate (what admission would reserve)."""
        from swarm_edge.engine import Engine

        return Engine(self.registry, self.settings, budget=self.budget, spare=False).status()

    def close(self) -> None:
        if self._loop is None:
            return
        loop, self._loop = self._loop, None
        if self._engine is not None and self.keep:
            loop.run_until_complete(self._engine.close())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def find_daemon(settings: Settings, local: bool, **in_process_only: Any) -> tuple[Any, list[str]]:
    """(a client of the running daemon, or None to run in-process; the in-process-only options that were given).
    A daemon is not used with --local, when none runs, or when an option only an in-process engine has is given."""
    if local:
        return None, []
    from swarm_edge.api.client import DaemonClient

    client = DaemonClient.find(settings.socket_path)
    given = [k for k, v in in_process_only.items() if v is not None]
    if client is not None and given:
        client.close()
        return None, given
    return client, []


@contextlib.contextmanager
def open_session(settings: Settings, registry: Registry, *, local: bool = False, keep: bool = False,
                 budget: str | None = None, progress_factory: Any = None, **in_process_only: Any):
    """The daemon's session when one runs (and nothing in `in_process_only` is set), else an in-process one."""
    client, _ = find_daemon(settings, local, budget=budget, **in_process_only)
    session: Session = DaemonSession(client) if client is not None else \
        LocalSession(registry, settings, budget=budget, keep=keep, progress_factory=progress_factory)
    try:
        yield session
    finally:
        session.close()


__all__ = ["DaemonSession", "LocalSession", "Session", "chat_body", "find_daemon", "open_session"]
