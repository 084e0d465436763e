"""The Ollama-compatible API under /api: tags, ps, version, chat, generate (an empty one is a preload), embed.
Errors here are Ollama's {"error": str} (errors.ERROR_FORMATS)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, cast

from fastapi import APIRouter, Request

from swarm_edge import __version__, errors, orchestrator, structured
from swarm_edge.api.deps import built, deadline_of, engine_of, generation, metrics_of, sink_for
from swarm_edge.api.schemas import (
    EMBEDDING_STATUSES,
    GENERATION_STATUSES,
    OllamaAnswer,
    OllamaChatRequest,
    OllamaEmbeddings,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    OllamaModels,
    Version,
    responses,
)
from swarm_edge.api.streaming import (
    NDJSON,
    ClosingStream,
    final_answer,
    ndjson,
    ndjson_error,
    now_rfc3339,
    ns,
    prime,
    within,
)
from swarm_edge.events import Done, Token
from swarm_edge.orchestration.answer import Answer
from swarm_edge.toolcalls import Toolset
from swarm_edge.workers.direct import NOW, TEXT, Framing

router = APIRouter()
NEVER = "0001-01-01T00:00:00Z"  # what Ollama shows for "never"


def ollama_name(name: str) -> str:
    return name[:-7] if name.endswith(":latest") else name


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def details(engine, spec) -> dict:
    model_file = spec.file("model")
    try:
        modified = (engine.settings.models_dir / spec.id / model_file.name).stat().st_mtime
    except OSError:
        modified = time.time()
    return {"name": spec.id, "model": spec.id, "modified_at": _rfc3339(modified),
            "size": sum(f.size for f in spec.files), "digest": model_file.sha256,
            "details": {"format": spec.format, "family": spec.kind, "families": [spec.kind],
                        "parameter_size": "", "quantization_level": ""}}


@router.get("/api/tags", responses=responses(OllamaModels))
async def tags(request: Request):
    engine = engine_of(request)
    return {"models": [details(engine, s) for s in engine.registry]}


@router.get("/api/ps", responses=responses(OllamaModels))
async def ps(request: Request):
    engine = engine_of(request)
    described = engine.describe()
    ttl = described["idle_ttl"]
    out = []
    for r in described["scheduler"]["residents"]:
        d = details(engine, engine.registry.get(r["model"]))
        expires = NEVER if not ttl or r.get("pinned") else _rfc3339(time.time() + ttl)
        d.update({"size": r["pss"] or r["reserved"], "size_vram": 0, "expires_at": expires})
        out.append(d)
    return {"models": out}


@router.get("/api/version", responses=responses(Version))
async def version():
    return {"version": __version__}


class _Shape:
    """An Ollama answer's pieces: `key` is "message" (chat) or "response" (generate)."""

    def __init__(self, model: str, key: str) -> None:
        self.model, self.key = model, key

    def piece(self, text: str, when: str | None = None) -> dict:
        base: dict[str, Any] = {"model": self.model, "created_at": when or now_rfc3339()}
        base.update({"message": {"role": "assistant", "content": text}} if self.key == "message"
                    else {"response": text})
        return base

    def framing(self) -> Framing:
        """A token's line as the worker writes it on the direct path: the same bytes `_lines` would write."""
        return Framing(ndjson({**self.piece(TEXT, NOW), "done": False}).decode())

    def final(self, answer: Answer, text: str) -> dict:
        t = answer.timings
        prompt_eval = max(0.0, (t.get("ttft_s") or 0) - (t.get("files_s") or 0) - (t.get("queue_s") or 0)
                          - (t.get("load_s") or 0))
        d = self.piece(text)
        if answer.tool_calls and self.key == "message":  # Ollama's shape: arguments as an object, no ids
            d["message"]["tool_calls"] = [{"function": {"name": c["name"], "arguments": c["arguments"]}}
                                          for c in answer.tool_calls]
        reason = "stop" if answer.finish_reason == "tool_calls" else answer.finish_reason  # Ollama's word for it
        d.update({"done": True, "done_reason": reason, "total_duration": ns(t.get("total_s")),
                  "load_duration": ns(t.get("load_s")), "prompt_eval_count": answer.prompt_tokens or 0,
                  "prompt_eval_duration": ns(prompt_eval), "eval_count": answer.tokens,
                  "eval_duration": ns(max(0.0, (t.get("generate_s") or 0) - prompt_eval)), "swarm": answer.trace()})
        return d


async def _lines(shape: _Shape, events):
    try:
        async for ev in events:
            if isinstance(ev, Token):
                if not ev.sent:  # else the worker wrote it to the client itself (the direct path)
                    yield ndjson({**shape.piece(ev.text), "done": False})
            elif isinstance(ev, Done):
                yield ndjson(shape.final(ev.result, ""))
    except errors.SwarmEdgeError as exc:
        yield ndjson_error(exc)


async def ollama_generation(request: Request, model: str, options, stream: bool, key: str, allow_cloud: bool = True,
                            fmt: Any = None, tools: Any = None, **kw: Any):
    metrics = metrics_of(request)
    # a bad format or tool is a 400 before anything runs (checked off the event loop: a schema is bounded, but
    # building its grammar is still CPU work)
    output = await built(structured.from_ollama, fmt)
    kw["tools"] = await built(Toolset.from_openai, tools)
    sink = sink_for(request, stream)
    events = generation(request, model_id=ollama_name(model), max_tokens=options.max_tokens, allow_cloud=allow_cloud,
                        output=output, sink=sink,
                        temperature=options.temperature or 0.0, top_p=options.top_p or 1.0,
                        stop=options.stop, seed=options.seed, **kw)
    until = deadline_of(request)
    start = await prime(events, until, metrics)
    shape = _Shape(start["model"], key)
    if not stream:
        answer = await final_answer(events, until, metrics)
        return shape.final(answer, answer.text)
    return ClosingStream(_lines(shape, events), events=events, metrics=metrics, deadline=until,
                         error_chunk=ndjson_error, media_type=NDJSON,
                         direct=(sink, shape.framing()) if sink is not None else None)


async def ollama_load(request: Request, model: str, key: str):
    """Load a model (within the budget) and release it at once: an idle resident until its TTL."""
    engine = engine_of(request)
    spec = engine.registry.get(ollama_name(model))
    async with engine.session(spec.id, compute=False):
        pass
    empty: Any = {"role": "assistant", "content": ""} if key == "message" else ""
    return {"model": spec.id, "created_at": now_rfc3339(), key: empty, "done": True, "done_reason": "load"}


@router.post("/api/chat", responses=responses(OllamaAnswer, *GENERATION_STATUSES, stream=NDJSON))
async def ollama_chat(request: Request, body: OllamaChatRequest):
    messages = body.plain_messages()
    if not messages:  # Ollama loads the model and answers done: a preload
        return await ollama_load(request, body.model, "message")
    return await ollama_generation(request, body.model, body.options, body.stream, "message", body.allow_cloud,
                                   body.format, body.tools, messages=messages, cache_prompt=body.cache_prompt)


@router.post("/api/generate", responses=responses(OllamaAnswer, *GENERATION_STATUSES, stream=NDJSON))
async def ollama_generate(request: Request, body: OllamaGenerateRequest):
    if not body.prompt:
        return await ollama_load(request, body.model, "response")
    if body.raw:
        return await ollama_generation(request, body.model, body.options, body.stream, "response", body.allow_cloud,
                                       body.format, prompt=body.prompt, cache_prompt=body.cache_prompt)
    messages = ([{"role": "system", "content": body.system}] if body.system else []) + \
        [{"role": "user", "content": body.prompt}]
    return await ollama_generation(request, body.model, body.options, body.stream, "response", body.allow_cloud,
                                   body.format, messages=messages, cache_prompt=body.cache_prompt)


@router.post("/api/embed", responses=responses(OllamaEmbeddings, *EMBEDDING_STATUSES))
async def ollama_embed(request: Request, body: OllamaEmbedRequest):
    texts = cast(list[str], body.input)  # the request's validator made it a list
    model, vectors, timings = await within(orchestrator.embed(engine_of(request), texts, ollama_name(body.model)),
                                           deadline_of(request), metrics_of(request))
    return {"model": model, "embeddings": vectors, "total_duration": ns(timings["total_s"]),
            "load_duration": ns(timings["load_s"]), "prompt_eval_count": timings.get("tokens") or 0}


__all__ = ["ollama_name", "router"]
