"""Response bodies of the HTTP API, as /openapi.json describes them, and the OpenAPI document's finishing.

The handlers answer plain dicts; these models only describe them in /openapi.json (response_model is not
used, so nothing is re-validated per request). tests/api/test_fuzz_api.py checks every answer against them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


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
    budget_source: str = Field(description="where the budget came from: a flag, the environment, or the default "
                                           "share of the box (RAM, or the memory cgroup's limit when smaller)")
    used: int
    base: int
    waiting: int
    asleep: bool = Field(False, description="no model resident for a while: the forkserver, its spare worker and "
                                            "the router's embedder are stopped until the next request")
    dozing: bool = Field(False, description="models resident, nothing in flight for a while: the forkserver and its "
                                            "spare worker are stopped until the next load (which starts them again)")
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
