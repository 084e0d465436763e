"""What the orchestrator needs from the machine it runs on. The Engine implements it; tests/fake/runtime.py
implements it with scripted FAKE sessions, so the orchestration logic is tested without a model file."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

from swarm_edge.events import Done, Start, Token
from swarm_edge.workers.base import GenerateRequest, GenStats

if TYPE_CHECKING:
    from swarm_edge.cloud import CloudConfig, CloudResult
    from swarm_edge.registry import Registry
    from swarm_edge.router import Route


class ModelSession(Protocol):
    """A leased model (swarm_edge.model_session.ModelSession)."""

    model_id: str
    timings: dict[str, Any]

    def generate(self, request: GenerateRequest, sink: Any = None,
                 ) -> AsyncGenerator[Start | Token | Done[GenStats], None]: ...

    async def embed(self, texts: list[str]) -> list[list[float]]: ...


class CloudPort(Protocol):
    """The cloud client (swarm_edge.cloud.CloudClient)."""

    config: CloudConfig

    def stream_chat(self, messages: list[dict[str, str]], *, reason: str, max_tokens: int | None,
                    temperature: float, top_p: float, stop: list[str], seed: int | None,
                    result: CloudResult,
                    response_format: dict[str, Any] | None = None,
                    tools: dict[str, Any] | None = None) -> AsyncGenerator[str, None]: ...


class Runtime(Protocol):
    """The engine as the orchestrator sees it."""

    registry: Registry
    offline: bool
    cloud: CloudPort | None
    cloud_policy: CloudConfig | None    # when to escalate (also offline: so a trace can say what stayed)

    def session(self, model_id: str, *, fetch: bool | None = None, progress_factory: Any = None,
                compute: bool = True) -> AbstractAsyncContextManager[ModelSession]: ...

    def route(self, text: str, resident: frozenset[str] = frozenset()) -> Route: ...

    def named_tasks(self, text: str) -> list[str]: ...

    def resident(self) -> frozenset[str]: ...

    def tool_format(self, model_id: str) -> str | None:
        """How the model's chat template renders tool calls (toolcalls.format_of), None if it cannot: known once
        the model's files are prepared (a session was opened)."""

    def hint(self, upcoming: list[str]) -> None: ...

    def too_big(self, model_id: str) -> str | None:
        """Why the model can never load inside the budget beside swarm-edge itself and pinned models, or None
        (it fits, or its size is not known yet). Blocking: call it in a thread."""


__all__ = ["CloudPort", "ModelSession", "Runtime"]
