"""A request as the orchestrator sees it (messages or a raw prompt, sampling, what it allows), and the message
helpers every strategy shares."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from swarm_edge.router import instruction_head
from swarm_edge.workers.base import GenerateRequest

if TYPE_CHECKING:
    from swarm_edge.registry import ModelSpec
    from swarm_edge.structured import OutputFormat
    from swarm_edge.toolcalls import Toolset

Msg = dict[str, str]


@dataclass(frozen=True)
class Sampling:
    """The caller's sampling, applied to every model call of the request."""

    max_tokens: int | None = None   # None: each model's own max_tokens
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    cache_prompt: bool = True
    logprobs: bool = False          # every call measures its mean token log-prob (swarm-edge tune reads the steps)
    output: OutputFormat | None = None  # the answer must be JSON (following a schema): grammar-constrained
    tools: Toolset | None = None        # functions the model may (or must) call

    def call(self, spec: ModelSpec, messages: list[Msg] | None, *, prompt: str | None = None,
             **over: Any) -> GenerateRequest:
        """The worker request for chat `messages` (or a raw completion `prompt`) on `spec`."""
        kw: dict[str, Any] = dict(max_tokens=self.max_tokens or spec.max_tokens, temperature=self.temperature,
                                  top_p=self.top_p, stop=list(self.stop), seed=self.seed,
                                  cache_prompt=self.cache_prompt, logprobs=self.logprobs,
                                  json_schema=self.output.generation_schema if self.output is not None else None)
        if self.tools is not None:
            kw.update(tools=self.tools.openai(), tool_choice=self.tools.openai_choice(),
                      parallel_tool_calls=self.tools.parallel)
        kw.update(over)
        if prompt is not None:
            return GenerateRequest(prompt=prompt, **kw)
        assert messages is not None
        if spec.kind == "completion":  # no template: the conversation's text is what the model continues
            turns = [m for m in messages if m.get("role") != "system"] or messages
            return GenerateRequest(prompt="\n".join(m["content"] for m in turns), **kw)
        return GenerateRequest(messages=messages, **kw)


@dataclass(frozen=True)
class Request:
    """One request: exactly one of chat `messages` or a raw `prompt`, and what the caller asked for."""

    messages: list[Msg] | None = None
    prompt: str | None = None
    model_id: str | None = None     # a model id, "auto", "cloud" or "pipeline:NAME"
    sampling: Sampling = field(default_factory=Sampling)
    task: str | None = None         # answer as this task's route: no routing, no plan
    decompose: bool = True
    allow_cloud: bool = True
    fetch: bool | None = None
    progress_factory: Callable[..., Any] | None = None
    sink: Any = None                # a streamed HTTP response a worker may write to itself (workers/direct.py)

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("stream() needs exactly one of messages or prompt")

    @classmethod
    def of(cls, *, messages: list[Msg] | None = None, prompt: str | None = None, model_id: str | None = None,
           max_tokens: int | None = None, temperature: float = 0.0, top_p: float = 1.0,
           stop: list[str] | None = None, seed: int | None = None, cache_prompt: bool = True,
           logprobs: bool = False, allow_cloud: bool = True, output: OutputFormat | None = None,
           tools: Toolset | None = None, **kw: Any) -> Request:
        """From `orchestrator.stream`'s keyword arguments."""
        sampling = Sampling(max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=tuple(stop or ()),
                            seed=seed, cache_prompt=cache_prompt, logprobs=logprobs, output=output,
                            tools=tools)
        return cls(messages=messages, prompt=prompt, model_id=model_id, sampling=sampling, allow_cloud=allow_cloud,
                   **kw)

    @property
    def text(self) -> str:
        """What routing and planning read: the raw prompt, or the last user message."""
        return self.prompt if self.prompt is not None else last_user_text(self.messages or [])

    def chat(self) -> list[Msg]:
        """The request as chat messages (a raw prompt becomes one user message)."""
        return self.messages if self.messages is not None else [{"role": "user", "content": self.text}]


def last_user_text(messages: list[Msg]) -> str:
    return next((m["content"] for m in reversed(messages) if m.get("role") == "user"), messages[-1]["content"])


def has_system(messages: list[Msg]) -> bool:
    return any(m.get("role") == "system" for m in messages)


def with_system(messages: list[Msg], system: str) -> list[Msg]:
    """`system` first, unless it is empty or the messages bring a system message of their own."""
    return [{"role": "system", "content": system}, *messages] if system and not has_system(messages) else messages


def instruction(text: str) -> str:
    """The request without its pasted material: the text before a colon followed by a newline or a long tail."""
    head = instruction_head(text)
    return head if len(head) < len(text.strip()) else text.strip()


def material(text: str) -> str:
    """The pasted material of a request: what follows its instruction head (empty if there is none)."""
    head = instruction_head(text)
    rest = text.strip()[len(head):]
    return rest.lstrip(":\n ").strip()


LABEL_PUNCTUATION = re.compile(r"[^\w\s-]+")


def normalised(text: str) -> str:
    return " ".join(LABEL_PUNCTUATION.sub(" ", text.lower()).split())


def echoes(answer: str, messages: list[Msg]) -> bool:
    """Whether an answer only repeats the request's material (small models do that instead of rewriting)."""
    pasted = material(last_user_text(messages))
    return bool(pasted) and normalised(answer) == normalised(pasted)


__all__ = ["Msg", "Request", "Sampling", "echoes", "has_system", "instruction", "last_user_text", "material",
           "normalised", "with_system"]
