"""Request bodies of the HTTP API: OpenAI-compatible (/v1) and Ollama-compatible (/api).

Clients send fields we do not use (user, presence_penalty, keep_alive, ...), so unknown fields are
accepted and ignored; fields whose meaning we cannot honour (n > 1, tools, logprobs, images, a JSON
response format) are refused with a 400 that names them, never silently dropped.
"""

from __future__ import annotations

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


class ChatMessage(_Lenient):
    """An OpenAI chat message."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    _valid = _unicode_fields("content")

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
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _chat_unsupported(self):
        if self.tools or self.functions:
            raise ValueError("tools and function calling are not supported")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise ValueError(f"response_format {self.response_format.get('type')!r} is not supported (text only)")
        for m in self.messages:
            m.text()  # raises for image or audio parts
        return self

    def plain_messages(self) -> list[dict[str, str]]:
        """Messages as {role, content} strings ('developer' is OpenAI's new name for 'system')."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]

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
    """An Ollama chat message."""

    role: Literal["system", "user", "assistant"]
    content: str = ""
    images: list[str] | None = None

    _valid = _unicode_fields("content")


class _OllamaBase(_Lenient):
    model: str = Field(min_length=1, max_length=200)
    allow_cloud: bool = True       # swarm-edge extension, as in the OpenAI requests
    cache_prompt: bool = True      # as in the OpenAI requests: false evaluates the whole prompt afresh
    stream: bool = True
    options: OllamaOptions = Field(default_factory=OllamaOptions)
    format: Any = None

    @model_validator(mode="after")
    def _no_format(self):
        if self.format not in (None, ""):
            raise ValueError("format (JSON mode) is not supported")
        return self


class OllamaChatRequest(_OllamaBase):
    """POST /api/chat."""

    messages: list[OllamaMessage] = Field(default_factory=list, max_length=1000)
    tools: list[Any] | None = None

    @model_validator(mode="after")
    def _chat_unsupported(self):
        if self.tools:
            raise ValueError("tools are not supported")
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


# ---------------------------------------------------------------- responses
# The handlers answer plain dicts; these models only describe them in /openapi.json (response_model is not
# used, so nothing is re-validated per request). tests/api/test_fuzz_api.py checks every answer against them.


class ErrorDetail(BaseModel):
    """The inside of an OpenAI-style error."""

    message: str
    type: Literal["invalid_request_error", "server_error"]
    param: None
    code: str
    swarm_error: str | None = Field(None, description="the exception class (swarm-edge's client re-raises it)")
    needed_bytes: int | None = Field(None, description="507: bytes the model needs")
    budget_bytes: int | None = Field(None, description="507: the memory budget")


class ErrorResponse(BaseModel):
    """An error outside /api/ (OpenAI's shape)."""

    error: ErrorDetail


class OllamaError(BaseModel):
    """An error under /api/ (Ollama's shape)."""

    error: str


class RouteOut(BaseModel):
    """A routing decision (DESIGN.md section 5's Route JSON)."""

    task: str
    model: str
    target: str
    confidence: float
    reason: str
    scores: dict[str, float]


class SwarmTrace(BaseModel):
    """The `swarm` object of an answer: who answered, why, every step, and where the time went."""

    model: str
    route: RouteOut
    plan: str
    steps: list[dict[str, Any]]
    timings: dict[str, float | None]
    tokens: int
    prompt_tokens: int | None
    left_device: bool
    escalation: dict[str, Any] | None


class Usage(BaseModel):
    """Token counts of an answer."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    """The answer of a chat completion."""

    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    """The one choice of a chat completion."""

    index: int
    message: AssistantMessage
    logprobs: None
    finish_reason: str


class ChatCompletion(BaseModel):
    """POST /v1/chat/completions (stream: false)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice] = Field(min_length=1, max_length=1)
    usage: Usage
    swarm: SwarmTrace


class TextChoice(BaseModel):
    """The one choice of a text completion (or a streamed piece of one)."""

    index: int
    text: str
    logprobs: None
    finish_reason: str | None


class Completion(BaseModel):
    """POST /v1/completions (stream: false)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice] = Field(min_length=1, max_length=1)
    usage: Usage
    swarm: SwarmTrace


class Delta(BaseModel):
    """What a streamed chat chunk adds."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    """The choice of a streamed chat chunk."""

    index: int
    delta: Delta
    logprobs: None
    finish_reason: str | None


class CompletionChunk(BaseModel):
    """One `data:` event of a streamed completion; the last carries `swarm`, then `usage` if asked for."""

    id: str
    object: Literal["chat.completion.chunk", "text_completion"]
    created: int
    model: str
    choices: list[ChunkChoice | TextChoice] = Field(max_length=1)
    swarm: SwarmTrace | None = None
    usage: Usage | None = None


class Embedding(BaseModel):
    """One vector: floats, or base64 of little-endian float32."""

    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class Embeddings(BaseModel):
    """POST /v1/embeddings."""

    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: dict[str, int]
    swarm: dict[str, Any]


class ModelCard(BaseModel):
    """A model of /v1/models: an id, `auto`, a `pipeline:NAME` or `cloud`; `swarm` says which kind."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    swarm: dict[str, Any]


class ModelList(BaseModel):
    """GET /v1/models."""

    object: Literal["list"]
    data: list[ModelCard]


class OllamaAnswer(BaseModel):
    """POST /api/chat (`message`) or /api/generate (`response`): the answer, a streamed line, or a preload's reply
    (done_reason "load"); the final one (done: true) carries the counts, durations (ns) and `swarm`."""

    model: str
    created_at: str
    message: AssistantMessage | None = None
    response: str | None = None
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    swarm: SwarmTrace | None = None


class OllamaEmbeddings(BaseModel):
    """POST /api/embed."""

    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class OllamaModel(BaseModel):
    """A model of /api/tags, or of /api/ps with `size_vram` and `expires_at`."""

    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: dict[str, Any]
    size_vram: int | None = None
    expires_at: str | None = None


class OllamaModels(BaseModel):
    """GET /api/tags and /api/ps."""

    models: list[OllamaModel]


class Version(BaseModel):
    """GET /api/version."""

    version: str


class Health(BaseModel):
    """GET /health."""

    status: Literal["ok"]
    version: str
    pid: int
    uptime_s: float
    models: int


class Resident(BaseModel):
    """A model held against the budget."""

    model: str
    state: str
    reserved: int
    pinned: bool
    in_use: int
    uses: int
    pss: int | None
    pid: int | None


class Status(BaseModel):
    """GET /swarm/status: budget, residents, queue, counters, each model's estimate."""

    budget: int
    used: int
    base: int
    waiting: int
    residents: list[Resident]
    stats: dict[str, int]
    models: dict[str, dict[str, Any]]
    pid: int
    socket: str
    streams_open: int
    cloud: dict[str, Any] | None


# ---------------------------------------------------------------- the OpenAPI document's responses

STATUS_DOCS = {
    400: "invalid body (invalid_request_body), something this daemon cannot do (invalid_request), or a prompt "
         "longer than the model's context (context_length_exceeded)",
    401: "TCP listener only: missing or wrong bearer token (unauthorized)",
    403: "TCP listener only: a Host header that is not a loopback name (forbidden_host)",
    404: "unknown model (model_not_found)",
    413: "body over 1 MiB (request_too_large)",
    500: "a worker crashed or a load or generation failed (worker_crashed, model_load_failed, inference_failed); "
         "internal_error is a bug: the daemon's log has the traceback",
    502: "the cloud fallback failed (cloud_unavailable)",
    503: "queue full or too many open connections (server_busy, with Retry-After), or a model's files or backend "
         "unavailable",
    504: "past the per-request deadline, serve --request-timeout (request_timeout)",
    507: "the model does not fit in the memory budget (insufficient_memory, with needed_bytes and budget_bytes)",
}
COMMON_STATUSES = (401, 403, 413, 500, 503)      # the Guard and the catch-all handler answer them on any path
GENERATION_STATUSES = (400, 404, 500, 502, 503, 504, 507)
EMBEDDING_STATUSES = (400, 404, 500, 503, 504, 507)
STREAM_ITEMS = {"text/event-stream": "CompletionChunk", "application/x-ndjson": "OllamaAnswer"}
_REF = "#/components/schemas/"


def responses(ok: type[BaseModel] | None, *statuses: int, stream: str | None = None) -> dict[int | str, dict]:
    """FastAPI `responses=` for a route: the 200 body `ok` (and the stream's items, `stream` being its media type)
    and the error statuses it can answer besides COMMON_STATUSES (their bodies are added by `finish_openapi`)."""
    out: dict[int | str, dict] = {s: {"description": STATUS_DOCS[s]} for s in statuses}
    if ok is not None:
        out[200] = {"model": ok, "description": "the answer" if stream is None else
                    "the answer, or with stream: true the stream of its pieces, one item each"}
    if stream is not None:
        out.setdefault(200, {})["content"] = {stream: {"itemSchema": _stream_item(stream)}}
    return out


def _stream_item(media_type: str) -> dict[str, Any]:
    chunk, error = _REF + STREAM_ITEMS[media_type], _REF + ("ErrorResponse" if media_type == "text/event-stream"
                                                            else "OllamaError")
    if media_type == "text/event-stream":  # `data: {chunk}` events, a final `data: [DONE]`, or an error event
        return {"type": "object", "required": ["data"], "properties": {"data": {"anyOf": [
            {"const": "[DONE]"},
            {"type": "string", "not": {"const": "[DONE]"}, "contentMediaType": "application/json",
             "contentSchema": {"anyOf": [{"$ref": chunk}, {"$ref": error}]}}]}}}
    return {"anyOf": [{"$ref": chunk}, {"$ref": error}]}  # one JSON object per line; an error ends the stream


def finish_openapi(doc: dict[str, Any]) -> dict[str, Any]:
    """Make FastAPI's document say what the daemon answers: no 422 (bad bodies are 400 here), the statuses every
    path can give, each error's body (Ollama's shape under /api/), and the stream items' schemas."""
    from pydantic.json_schema import models_json_schema

    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    _, defs = models_json_schema([(m, "serialization") for m in (CompletionChunk, OllamaAnswer, ErrorResponse,
                                                                 OllamaError)], ref_template=_REF + "{model}")
    for name, schema in defs["$defs"].items():
        components.setdefault(name, schema)
    for path, operations in doc.get("paths", {}).items():
        error = {"$ref": _REF + ("OllamaError" if path.startswith("/api/") else "ErrorResponse")}
        for op in operations.values():
            answers = op.setdefault("responses", {})
            answers.pop("422", None)
            for status in COMMON_STATUSES:
                answers.setdefault(str(status), {"description": STATUS_DOCS[status]})
            for status, answer in answers.items():
                if status != "200":
                    answer["content"] = {"application/json": {"schema": error}}
            if "503" in answers:
                answers["503"]["headers"] = {"Retry-After": {
                    "description": "seconds to wait (server_busy only)", "schema": {"type": "integer"}}}
    return doc
