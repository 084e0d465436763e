"""The backend contract: a handful of methods, plain data in and out.

Requests and events are plain dataclasses and dicts so that the same backend can run in-process or in a
worker process, with only a framed pipe between the caller and it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Protocol


@dataclass(frozen=True)
class GenerateRequest:
    """One generation: chat `messages`, or a plain `prompt` for completion models."""

    messages: list[dict[str, Any]] | None = None   # OpenAI's shape; tool calls and tool results included
    prompt: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False          # report the mean log-probability of the sampled tokens (cascade confidence)
    json_schema: dict | None = None  # constrain the output to JSON matching this schema (grammar-constrained)
    cache_prompt: bool = True       # reuse the KV cache of a shared prompt prefix; False evaluates it afresh
    tools: list[dict[str, Any]] | None = None  # OpenAI's `tools` (checked: toolcalls.Toolset), for chat messages
    tool_choice: Any = None         # OpenAI's tool_choice ("auto", "required", or a named function)
    parallel_tool_calls: bool | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("GenerateRequest needs exactly one of messages or prompt")

    def wire(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict, for the worker's order. Not dataclasses.asdict: every field is plain JSON
        already, and asdict's deep copy of the messages cost 30 us of each request's time to first token."""
        return {name: getattr(self, name) for name in _REQUEST_FIELDS}


_REQUEST_FIELDS = tuple(f.name for f in fields(GenerateRequest))


@dataclass(frozen=True)
class LoadInfo:
    """What a backend reports after loading: how long it took and what it found in the file."""

    load_s: float
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenStats:
    """A generation's closing figures: the worker's `done` event (gguf.py), or what the cloud reported."""

    finish_reason: str = "stop"
    chunks: int = 0                     # pieces of text produced (one per token on llama.cpp)
    prompt_tokens: int | None = None
    ttft_s: float | None = None         # the model's own time to first token
    decode_tok_s: float | None = None
    generate_s: float | None = None
    mean_logprob: float | None = None   # measured only when the request asked for logprobs
    min_logprob: float | None = None
    tool_calls: list[dict[str, Any]] | None = None  # [{name, arguments}] when the model called tools
    tool_call_unfinished: bool | None = None        # it began a call that never ended (cut off)

    @classmethod
    def from_wire(cls, event: dict[str, Any]) -> GenStats:
        """From the worker's done event (unknown keys are ignored)."""
        return cls(**{f.name: event[f.name] for f in fields(cls) if event.get(f.name) is not None})


class Backend(Protocol):
    """A loaded model. Not thread-safe: one call at a time per instance."""

    info: LoadInfo                      # set by __init__
    last_tokens: int | None             # tokens of the last embed() batch (None where the backend does not count)

    def __init__(self, model_path: str, *, options: dict[str, Any]) -> None:
        """Validate the files and load the model (options: n_ctx, n_batch, threads, tokenizer, ...)."""

    def generate(self, request: GenerateRequest) -> Iterator[dict[str, Any]]:
        """Stream {"type": "token", "text"} events, then one {"type": "done", ...} with counts and times."""

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector per text."""

    def calibrate(self) -> None:
        """Run a representative request once, so the worker's peak memory can be measured after load."""

    def close(self) -> None:
        """Free native resources; safe to call twice."""


class EmbeddingBackend(Backend, Protocol):
    """An embedding model the router also runs in-process (router.py)."""

    def embed_with_prefix(self, text: str, prefix_chars: int) -> tuple[Any, Any]:
        """The text's vector and that of its first `prefix_chars` characters, from one pass."""
