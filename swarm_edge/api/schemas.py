"""Request bodies of the HTTP API: OpenAI-compatible (/v1) and Ollama-compatible (/api).

Clients send fields we do not use (user, presence_penalty, keep_alive, ...), so unknown fields are
accepted and ignored; fields whose meaning we cannot honour (n > 1, logprobs, images) are refused
with a 400 that names them, never silently dropped.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP = 4
MAX_INPUTS = 2048


def _unicode(text: str) -> str:
    # JSON's \udXXX escapes let a body carry a lone UTF-16 surrogate; Python reads it into a str that no UTF-8
    # encoder takes (the tokenizers, our own error messages), so it would surface as a 500 deep inside
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text is not valid Unicode: a lone surrogate (U+{ord(text[exc.start]):04X}) at "
                         f"character {exc.start}") from None
    return text


def _unicode_fields(*names: str):
    """A validator for the string fields `names` that reach a model or a message: valid Unicode only."""
    return field_validator(*names)(lambda cls, v: _unicode(v) if isinstance(v, str) else v)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(_Lenient):
    """One part of a multi-part message; only text parts are supported."""

    type: str
    text: str | None = None

    _valid = _unicode_fields("type", "text")


class FunctionCall(_Lenient):
    """The function of an assistant's tool call: its name and its arguments (a JSON string, as OpenAI sends it)."""

    name: str = Field(min_length=1, max_length=64)
    arguments: str = "{}"

    _valid = _unicode_fields("name", "arguments")


class ToolCall(_Lenient):
    """One tool call of an assistant message in the history."""

    id: str = Field(min_length=1, max_length=200)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    """An OpenAI chat message (tool calls of the assistant and the tools' results included)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = Field(None, max_length=200)

    _valid = _unicode_fields("content")

    def plain(self) -> dict[str, Any]:
        """{role, content} with the tool fields where they apply ('developer' is OpenAI's new name for 'system')."""
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump(include={"id", "type", "function"}) for c in self.tool_calls]
        if self.role == "tool":
            out["tool_call_id"] = self.tool_call_id
        return out

    def text(self) -> str:
        """The message's text; a non-text part is an error."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        bad = [p.type for p in self.content if p.type != "text"]
        if bad:
            raise ValueError(f"message parts of type {', '.join(sorted(set(bad)))} are not supported (text only)")
        return "".join(p.text or "" for p in self.content)


def _stop_list(v: Any) -> list[str]:
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else list(v)
    if len(stops) > MAX_STOP:
        raise ValueError(f"at most {MAX_STOP} stop sequences")
    if any(not s for s in stops):
        raise ValueError("stop sequences must not be empty")
    return [_unicode(s) for s in stops]


class _Sampling(_Lenient):
    model: str = Field(min_length=1, max_length=200)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int | None = None
    logprobs: bool | int | None = None
    offline: bool = False          # swarm-edge extension: never download a model, never use the cloud
    allow_cloud: bool = True       # swarm-edge extension: false keeps this request on the device, whatever else
    cache_prompt: bool = True      # llama-server's name: false evaluates the whole prompt afresh (reproducible)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        return _stop_list(v)

    @model_validator(mode="after")
    def _unsupported(self):
        if self.n not in (None, 1):
            raise ValueError("n > 1 is not supported: ask once per answer")
        if self.logprobs:
            raise ValueError("logprobs are not supported")
        return self

    @property
    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage chunk (stream_options.include_usage)."""
        return bool((self.stream_options or {}).get("include_usage"))


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)
    tools: list[Any] | None = None          # checked by toolcalls.Toolset.from_openai (400s name the field)
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _chat_unsupported(self):
        if self.functions:
            raise ValueError("functions (the legacy form of tools) are not supported: send tools")
        calls: set[str] = set()
        for i, m in enumerate(self.messages):
            m.text()  # raises for image or audio parts
            calls.update(c.id for c in m.tool_calls or ())
            if m.role == "tool" and m.tool_call_id not in calls:
                raise ValueError(f"messages[{i}] is a tool result whose tool_call_id {m.tool_call_id!r} answers no "
                                 "call of an earlier assistant message")
        return self

    def plain_messages(self) -> list[dict[str, Any]]:
        """Messages as {role, content} strings, with the tool fields where they apply."""
        return [m.plain() for m in self.messages]

    @property
    def limit(self) -> int | None:
        """The token cap, under either of OpenAI's names for it."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("exactly one prompt per request")
            v = v[0]
        if not v:
            raise ValueError("prompt must not be empty")
        return _unicode(v)

    @model_validator(mode="after")
    def _completion_unsupported(self):
        if self.echo or self.suffix:
            raise ValueError("echo and suffix are not supported")
        return self


class EmbeddingRequest(_Lenient):
    """POST /v1/embeddings."""

    model: str = Field(min_length=1, max_length=200)
    input: str | list[str] = Field(...)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None

    @field_validator("input")
    @classmethod
    def _inputs(cls, v):
        return _texts(v)

    @model_validator(mode="after")
    def _no_dimensions(self):
        if self.dimensions is not None:
            raise ValueError("dimensions is not supported: the model's own size is returned")
        return self


def _texts(v: str | list[str]) -> list[str]:
    texts = [v] if isinstance(v, str) else v
    if not texts:
        raise ValueError("input must not be empty")
    if len(texts) > MAX_INPUTS:
        raise ValueError(f"at most {MAX_INPUTS} inputs per request")
    return [_unicode(t) for t in texts]


# ---------------------------------------------------------------- Ollama


class OllamaOptions(_Lenient):
    """The subset of Ollama's `options` that maps onto our sampling."""

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    num_predict: int | None = None
    seed: int | None = None
    stop: list[str] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        return _stop_list(v)

    @property
    def max_tokens(self) -> int | None:
        """num_predict; Ollama's -1 (infinite) and -2 (fill context) mean the model's default cap here."""
        return self.num_predict if self.num_predict and self.num_predict > 0 else None


class OllamaMessage(_Lenient):
    """An Ollama chat message (an assistant's tool calls, with arguments as objects, and tool results included)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None

    _valid = _unicode_fields("content")

    def plain(self) -> dict[str, Any]:
        return {"role": self.role, "content": self.content}


class _OllamaBase(_Lenient):
    model: str = Field(min_length=1, max_length=200)
    allow_cloud: bool = True       # swarm-edge extension, as in the OpenAI requests
    cache_prompt: bool = True      # as in the OpenAI requests: false evaluates the whole prompt afresh
    stream: bool = True
    options: OllamaOptions = Field(default_factory=OllamaOptions)  # type: ignore[arg-type]
    format: Any = None             # "json" or a JSON schema: swarm_edge.structured.from_ollama reads it


class OllamaChatRequest(_OllamaBase):
    """POST /api/chat."""

    messages: list[OllamaMessage] = Field(default_factory=list, max_length=1000)
    tools: list[Any] | None = None          # OpenAI's shape; checked by toolcalls.Toolset.from_openai

    def plain_messages(self) -> list[dict[str, Any]]:
        """The messages in OpenAI's shape, as the rest of swarm-edge takes them: an assistant's calls get ids and
        JSON-text arguments, and each tool result the id of the call it answers (Ollama's answer the calls of
        the assistant message before them, in order)."""
        out, pending, n = [], [], 0
        for m in self.messages:
            d = m.plain()
            if m.tool_calls:
                calls = []
                for c in m.tool_calls:
                    fn: dict[str, Any] = c["function"] if isinstance(c.get("function"), dict) else c
                    args = fn.get("arguments", {})
                    n += 1
                    calls.append({"id": f"call_{n}", "type": "function", "function": {
                        "name": str(fn.get("name", "")),
                        "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)}})
                d["tool_calls"], pending = calls, [c["id"] for c in calls]
            elif m.role == "tool":
                d["tool_call_id"] = pending.pop(0) if pending else None
            out.append(d)
        return out

    @model_validator(mode="after")
    def _chat_unsupported(self):
        if any(m.images for m in self.messages):
            raise ValueError("images are not supported")
        return self


class OllamaGenerateRequest(_OllamaBase):
    """POST /api/generate."""

    prompt: str = ""
    system: str | None = None
    raw: bool = False
    images: list[str] | None = None

    _valid = _unicode_fields("prompt", "system")

    @model_validator(mode="after")
    def _gen_unsupported(self):
        if self.images:
            raise ValueError("images are not supported")
        return self


class OllamaEmbedRequest(_Lenient):
    """POST /api/embed."""

    model: str = Field(min_length=1, max_length=200)
    input: str | list[str]

    @field_validator("input")
    @classmethod
    def _inputs(cls, v):
        return _texts(v)


class RouteRequest(_Lenient):
    """POST /swarm/route."""

    prompt: str = Field(min_length=1)


from swarm_edge.api.responses import (  # noqa: E402  (the response models live there; re-exported)
    COMMON_STATUSES,
    EMBEDDING_STATUSES,
    GENERATION_STATUSES,
    STATUS_DOCS,
    STREAM_ITEMS,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChunkChoice,
    Completion,
    CompletionChunk,
    Delta,
    Embedding,
    Embeddings,
    ErrorDetail,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    OllamaAnswer,
    OllamaEmbeddings,
    OllamaError,
    OllamaModel,
    OllamaModels,
    Resident,
    RouteOut,
    Status,
    SwarmTrace,
    TextChoice,
    Usage,
    Version,
    finish_openapi,
    responses,
)

__all__ = [
    "AssistantMessage", "COMMON_STATUSES", "ChatChoice", "ChatCompletion", "ChatCompletionRequest", "ChatMessage",
    "ChunkChoice", "Completion", "CompletionChunk", "CompletionRequest", "ContentPart", "Delta",
    "EMBEDDING_STATUSES", "Embedding", "EmbeddingRequest", "Embeddings", "ErrorDetail", "ErrorResponse",
    "GENERATION_STATUSES", "Health", "MAX_INPUTS", "MAX_STOP", "ModelCard", "ModelList", "OllamaAnswer",
    "OllamaChatRequest", "OllamaEmbedRequest", "OllamaEmbeddings", "OllamaError", "OllamaGenerateRequest",
    "OllamaMessage", "OllamaModel", "OllamaModels", "OllamaOptions", "Resident", "RouteOut", "RouteRequest",
    "STATUS_DOCS", "STREAM_ITEMS", "Status", "SwarmTrace", "TextChoice", "Usage", "Version", "finish_openapi",
    "responses"
]
