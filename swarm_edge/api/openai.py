"""The OpenAI-compatible API under /v1: models, chat completions, completions, embeddings."""

from __future__ import annotations

import array
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

from fastapi import APIRouter, Request

from swarm_edge import errors, orchestrator, structured
from swarm_edge.api.deps import built, deadline_of, engine_of, generation, metrics_of, sink_for
from swarm_edge.api.errors import classify, error_body
from swarm_edge.api.schemas import (
    EMBEDDING_STATUSES,
    GENERATION_STATUSES,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingRequest,
    Embeddings,
    ModelCard,
    ModelList,
    responses,
)
from swarm_edge.api.streaming import SSE, ClosingStream, final_answer, prime, sse, usage, within
from swarm_edge.events import Done, Event, Token
from swarm_edge.orchestration.answer import Answer
from swarm_edge.toolcalls import Toolset
from swarm_edge.workers.direct import TEXT, Framing

router = APIRouter()


def _card(request: Request, model_id: str, swarm: dict) -> dict:
    return {"id": model_id, "object": "model", "created": int(metrics_of(request).started), "owned_by": "swarm-edge",
            "swarm": swarm}


def model_card(request: Request, spec) -> dict:
    return _card(request, spec.id, {"format": spec.format, "kind": spec.kind, "tasks": spec.tasks})


@router.get("/v1/models", responses=responses(ModelList))
async def list_models(request: Request):
    engine = engine_of(request)
    auto = _card(request, orchestrator.AUTO, {"kind": "router", "router": engine.router.kind,
                                              "tasks": list(engine.registry.routes)})
    pipes = [_card(request, orchestrator.PIPELINE_PREFIX + name,
                   {"kind": "pipeline", "steps": p.steps, "description": p.description})
             for name, p in engine.registry.pipelines.items()]
    cloud = [_card(request, orchestrator.CLOUD, {"kind": "cloud", **engine.cloud.describe()})] \
        if engine.cloud is not None else []
    return {"object": "list", "data": [auto] + [model_card(request, s) for s in engine.registry] + pipes + cloud}


@router.get("/v1/models/{model_id:path}", responses=responses(ModelCard, 404))
async def get_model(request: Request, model_id: str):
    return model_card(request, engine_of(request).registry.get(model_id))


class _Reply:
    """One completion's envelope: its id, object names and choice shape (chat or text)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.object = "chat.completion" if kind == "chat" else "text_completion"

    def choice(self, text: str | None, finish: str | None) -> dict:
        if self.kind == "chat":
            delta = {} if text is None else {"content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

    def calls(self, answer: Answer) -> list[dict]:
        """The answer's tool calls in OpenAI's shape (arguments as a JSON string), each with an id of its own."""
        return [{"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                 "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
                for c in answer.tool_calls]

    def whole(self, answer: Answer) -> dict:
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": answer.text}
            if answer.tool_calls:
                message = {"role": "assistant", "content": answer.text or None, "tool_calls": self.calls(answer)}
            ch = {"index": 0, "message": message, "logprobs": None, "finish_reason": answer.finish_reason}
        else:
            ch = {"index": 0, "text": answer.text, "logprobs": None, "finish_reason": answer.finish_reason}
        return {"id": self.id, "object": self.object, "created": self.created, "model": answer.model, "choices": [ch],
                "usage": usage(answer), "swarm": answer.trace()}

    def chunk(self, model: str, choices: list, **extra: Any) -> bytes:
        return sse({"id": self.id, "object": self.object + ".chunk" if self.kind == "chat" else self.object,
                    "created": self.created, "model": model, "choices": choices, **extra})

    def role(self, model: str) -> bytes:
        """OpenAI's first chat chunk: the role only (it goes out with the first token)."""
        return self.chunk(model, [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                   "finish_reason": None}]) if self.kind == "chat" else b""

    def framing(self, model: str) -> Framing:
        """A token's chunk as the worker writes it on the direct path: the same bytes `_chunks` would write."""
        return Framing(self.chunk(model, [self.choice(TEXT, None)]).decode(), first=self.role(model).decode())


def _delta(delta: dict) -> dict:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}


def sse_error(exc: Exception) -> bytes:
    assert isinstance(exc, errors.SwarmEdgeError)
    status, code = classify(exc)
    return sse(error_body(status, str(exc), code, kind=type(exc).__name__))


async def _chunks(reply: _Reply, model: str, events: AsyncIterator[Event], include_usage: bool):
    """The SSE body: the role chunk with the first token, a chunk per token, the finish chunk with the trace,
    usage when asked for, [DONE]. An error after the start ends the body with an error chunk."""
    # A token chunk is the same bytes around the token's JSON string: build the two halves once, not a dict
    # and a full json.dumps per token (this runs on the cores the model decodes on).
    head, marker, tail = reply.chunk(model, [reply.choice("\x00", None)]).partition(b'"\\u0000"')
    assert marker, "the token placeholder must appear in the chunk template"
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    try:
        # OpenAI's first chunk carries only the role; it goes out in one write with the first token
        role = reply.role(model)
        async for ev in events:
            if isinstance(ev, Token):
                if ev.sent:  # the worker wrote it to the client itself (the direct path), role chunk first
                    role = b""
                    continue
                piece = head + dumps(ev.text).encode() + tail
                yield role + piece if role else piece
                role = b""
            elif isinstance(ev, Done):
                answer = ev.result
                if role:  # no token at all
                    yield role
                for i, call in enumerate(reply.calls(answer)):  # as OpenAI streams them: the call, then its arguments
                    name = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
                    yield reply.chunk(model, [_delta({"tool_calls": [{"index": i, **name}]})])
                    yield reply.chunk(model, [_delta({"tool_calls": [
                        {"index": i, "function": {"arguments": call["function"]["arguments"]}}]})])
                yield reply.chunk(model, [reply.choice(None if reply.kind == "chat" else "", answer.finish_reason)],
                                  swarm=answer.trace())
                if include_usage:
                    yield reply.chunk(model, [], usage=usage(answer))
        yield b"data: [DONE]\n\n"
    except errors.SwarmEdgeError as exc:
        yield sse_error(exc)


async def openai_generation(request: Request, body, kind: str, **kw: Any):
    if body.offline and body.model == orchestrator.CLOUD:
        raise errors.ConfigError("model \"cloud\" and offline: true contradict each other")
    metrics = metrics_of(request)
    sink = sink_for(request, body.stream)
    events = generation(request, model_id=body.model, temperature=body.temperature or 0.0, top_p=body.top_p or 1.0,
                        stop=body.stop, seed=body.seed, cache_prompt=body.cache_prompt, sink=sink,
                        fetch=False if body.offline else None, allow_cloud=body.allow_cloud and not body.offline, **kw)
    until = deadline_of(request)
    start = await prime(events, until, metrics)
    reply = _Reply(kind)
    if not body.stream:
        return reply.whole(await final_answer(events, until, metrics))
    return ClosingStream(_chunks(reply, start["model"], events, body.include_usage), events=events, metrics=metrics,
                         deadline=until, error_chunk=sse_error, media_type=SSE,
                         direct=(sink, reply.framing(start["model"])) if sink is not None else None,
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/v1/chat/completions", responses=responses(ChatCompletion, *GENERATION_STATUSES, stream=SSE))
async def chat_completions(request: Request, body: ChatCompletionRequest):
    # a bad schema or tool is a 400 before anything runs (checked off the event loop: building a grammar is CPU)
    output = await built(structured.from_openai, body.response_format)
    tools = await built(Toolset.from_openai, body.tools, body.tool_choice, body.parallel_tool_calls)
    return await openai_generation(request, body, "chat", messages=body.plain_messages(), max_tokens=body.limit,
                                   output=output, tools=tools)


@router.post("/v1/completions", responses=responses(Completion, *GENERATION_STATUSES, stream=SSE))
async def completions(request: Request, body: CompletionRequest):
    return await openai_generation(request, body, "text", prompt=body.prompt, max_tokens=body.max_tokens)


@router.post("/v1/embeddings", responses=responses(Embeddings, *EMBEDDING_STATUSES))
async def embeddings(request: Request, body: EmbeddingRequest):
    texts = cast(list[str], body.input)  # the request's validator made it a list
    model, vectors, timings = await within(orchestrator.embed(engine_of(request), texts, body.model),
                                           deadline_of(request), metrics_of(request))
    tokens = timings.pop("tokens", None) or 0
    data = []
    for i, vec in enumerate(vectors):
        if body.encoding_format == "base64":
            emb: Any = base64.b64encode(array.array("f", vec).tobytes()).decode()
        else:
            emb = vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "swarm": {"model": model, "timings": timings, "left_device": False}}


__all__ = ["router"]
