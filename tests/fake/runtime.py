"""FAKES for the orchestration tier: scripted model sessions, a scripted router and a scripted cloud.

Nothing here loads a model, opens a model file or a socket. A FakeRuntime stands where the Engine stands (the
orchestrator only uses what `swarm_edge.orchestration.runtime.Runtime` names); each model answers from a script
of `Reply`s, the router from a table or the real keyword rules (pure Python), the cloud from a list of texts.
Ordering in tests uses asyncio events, never sleeps; the clock is a ManualClock where time matters.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarm_edge.cloud import CloudConfig, CloudResult
from swarm_edge.errors import CloudUnavailableError
from swarm_edge.events import Done, Start, Token
from swarm_edge.registry import Registry, parse_registry
from swarm_edge.router import KeywordRouter, Route
from swarm_edge.workers.base import GenerateRequest, GenStats

ZERO = "0" * 64


def _model(mid: str, tasks: str, *, kind: str = "chat", fmt: str = "gguf", extra: str = "") -> str:
    name = "model.onnx" if fmt == "onnx" else f"{mid}.gguf"
    return f"""
  - id: {mid}
    format: {fmt}
    kind: {kind}
    tasks: [{tasks}]
    max_tokens: 32{extra}
    files:
      - name: {name}
        size: 1
        sha256: "{ZERO}"
        sources: [{{path: "/nonexistent/fake/{name}"}}]""" + ("" if fmt != "onnx" else f"""
      - name: tokenizer.json
        role: tokenizer
        size: 1
        sha256: "{ZERO}"
        sources: [{{path: "/nonexistent/fake/tokenizer.json"}}]""")


FAKE_YAML = "version: 1\ndefault_task: chat\nmodels:" + "".join([
    _model("small", "chat, rewrite, translate, classify, summarize, math, extract"),
    _model("big", "chat, rewrite, translate, classify, summarize, math, extract"),
    _model("third", "translate, classify"),
    _model("base", "chat", kind="completion"),
    _model("embedder", "chat", kind="embedding", fmt="onnx",
           extra="\n    embedding: {pooling: mean, normalize: true, max_length: 128}"),
]) + """
routes:
  chat: {keywords: [hello], models: [small]}
  rewrite: {keywords: [rewrite], models: [small, big], strategy: cascade, min_logprob: -0.5}
  translate: {keywords: [translate], models: [small, big, third], strategy: cascade, min_logprob: -0.5,
              system: "Translate faithfully."}
  classify: {keywords: [classify], models: [small, big, third], strategy: ensemble,
             system: "Answer with the label only."}
  summarize: {keywords: [summarize], models: [small, big], strategy: ensemble}
  math: {keywords: [calculate], models: [small, big], tool: calculator, min_logprob: -0.5}
  count: {keywords: [count], models: [small, big], strategy: cascade, tool: calculator, min_logprob: -0.5}
  extract: {keywords: [extract], models: [big], system: "Extract the fields."}
pipelines:
  polish:
    steps: [rewrite, chat]
    instructions: ["Rewrite this more politely: {input}", "Reply briefly to this message: {input}"]
  plain:
    steps: [chat, extract]
router:
  decompose: true
  split_confidence: 0.75
"""


def fake_registry(text: str = FAKE_YAML, **router: Any) -> Registry:
    """The fake swarm's registry (its files are never opened). `router` overrides keys of its router section."""
    for key, value in router.items():
        head, _, tail = text.partition("router:\n")
        kept = "".join(line + "\n" for line in tail.splitlines() if not line.startswith(f"  {key}:"))
        text = f"{head}router:\n  {key}: {'null' if value is None else value}\n{kept}"
    return parse_registry(text, Path("/nonexistent/fake/models.yaml"))


@dataclass
class Reply:
    """One scripted generation: its text (as chunks), its figures, and where it fails or waits."""

    text: str | list[str] = "ok"
    mean_logprob: float | None = -0.1
    finish_reason: str = "stop"
    prompt_tokens: int | None = 7
    fail_at_open: BaseException | None = None   # raised when the session is opened (a load refused, say)
    fail_at_begin: BaseException | None = None  # raised before Start
    fail_after: int | None = None               # raise `fail_with` after this many tokens
    fail_with: BaseException | None = None
    gate: Any = None                            # an asyncio.Event the first token waits for
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # the calls it "makes": [{name, arguments}]

    def chunks(self) -> list[str]:
        return [self.text] if isinstance(self.text, str) else list(self.text)


@dataclass
class Record:
    """What a fake session saw: the model, the request, and how the stream ended."""

    model: str
    request: GenerateRequest | None = None
    events: list[str] = field(default_factory=list)
    closed_early: bool = False
    compute: bool = True


class FakeSession:
    """A FAKE ModelSession: answers from a Reply."""

    def __init__(self, model_id: str, reply: Reply, record: Record, count: Callable[[str, int], None]) -> None:
        self.model_id, self.reply, self.record, self._count = model_id, reply, record, count
        self.timings: dict[str, Any] = {"files_s": 0.0, "queue_s": 0.0, "load_s": 0.0}

    async def generate(self, request: GenerateRequest, sink=None) -> AsyncIterator[Start | Token | Done[GenStats]]:
        # FAKE: the fake never takes the direct path (sink ignored): its tokens always come as events
        self.record.request = request
        r = self.reply
        if r.fail_at_begin is not None:
            raise r.fail_at_begin
        finished = False
        try:
            self.record.events.append("start")
            yield Start(self.model_id)
            chunks = r.chunks()
            for i, chunk in enumerate(chunks):
                if r.fail_after is not None and i == r.fail_after:
                    raise r.fail_with or RuntimeError("scripted failure")
                if i == 0 and r.gate is not None:
                    await r.gate.wait()
                self.record.events.append("token")
                yield Token(chunk)
            if r.fail_after is not None and r.fail_after >= len(chunks):
                raise r.fail_with or RuntimeError("scripted failure")
            finished = True
        finally:
            if not finished:
                self.record.closed_early = True
        n = len(chunks)
        self._count(self.model_id, n)
        lp = r.mean_logprob if request.logprobs else None
        self.timings.update(ttft_s=0.001, model_ttft_s=0.001, decode_tok_s=100.0, generate_s=0.01, total_s=0.01)
        self.record.events.append("done")
        yield Done(GenStats(finish_reason=r.finish_reason, chunks=n, prompt_tokens=r.prompt_tokens, ttft_s=0.001,
                            decode_tok_s=100.0, generate_s=0.01, mean_logprob=lp, min_logprob=lp,
                            tool_calls=list(r.tool_calls) or None))

    async def embed(self, texts: list[str]) -> list[list[float]]:
        self.timings.update(embed_s=0.001, total_s=0.001, tokens=sum(len(t.split()) for t in texts))
        return [[float(len(t)), 1.0] for t in texts]


class FakeRuntime:
    """A FAKE Engine for the orchestrator: scripted models and routes, no files, no workers, no network.

    replies: model id -> a Reply, or a list of Replies used in turn (the last one repeats).
    routes: text -> Route or task name; a callable; or None for the real keyword rules over the registry.
    """

    def __init__(self, registry: Registry | None = None, *, replies: dict[str, Any] | None = None,
                 routes: dict[str, Any] | Callable[[str], Route] | None = None, cloud: FakeCloud | None = None,
                 cloud_policy: CloudConfig | None = None, offline: bool = False,
                 resident: frozenset[str] = frozenset(), no_tools: frozenset[str] = frozenset(),
                 too_big: frozenset[str] = frozenset()) -> None:
        self.registry = registry if registry is not None else fake_registry()
        self.replies = dict(replies or {})
        self.routes = routes
        self.keywords = KeywordRouter(self.registry)
        self.cloud = cloud
        self.cloud_policy = cloud_policy if cloud_policy is not None else (cloud.config if cloud else None)
        self.offline = offline
        self._resident = resident
        self.no_tools = no_tools  # models whose (imagined) chat template cannot render tools
        self.big = too_big        # models that (imaginarily) cannot fit the budget
        self.records: list[Record] = []
        self.hints: list[list[str]] = []
        self.routed: list[str] = []
        self.tokens: dict[str, int] = {}
        self.open_sessions = 0

    def _reply(self, model_id: str) -> Reply:
        script = self.replies.get(model_id, Reply(f"{model_id} says ok"))
        if isinstance(script, list):
            script = script.pop(0) if len(script) > 1 else script[0]
        return script if isinstance(script, Reply) else Reply(script)

    @contextlib.asynccontextmanager
    async def session(self, model_id: str, *, fetch: bool | None = None, progress_factory=None,
                      compute: bool = True) -> AsyncIterator[FakeSession]:
        self.registry.get(model_id)
        reply = self._reply(model_id)
        if reply.fail_at_open is not None:
            raise reply.fail_at_open
        record = Record(model_id, compute=compute)
        self.records.append(record)
        self.open_sessions += 1
        try:
            yield FakeSession(model_id, reply, record, self.count_tokens)
        finally:
            self.open_sessions -= 1

    def count_tokens(self, model_id: str, n: int) -> None:
        self.tokens[model_id] = self.tokens.get(model_id, 0) + n

    def route(self, text: str, resident: frozenset[str] = frozenset()) -> Route:
        self.routed.append(text)
        if callable(self.routes):
            return self.routes(text)
        if self.routes is not None and text in self.routes:
            got = self.routes[text]
            if isinstance(got, Route):
                return got
            task, confidence = got if isinstance(got, tuple) else (got, 0.9)
            return Route(task=task, model=self.registry.routes[task].models[0], confidence=confidence,
                         reason=f"scripted: {task}")
        return self.keywords.route(text)

    def named_tasks(self, text: str) -> list[str]:
        return self.keywords.named_tasks(text)

    def resident(self) -> frozenset[str]:
        return self._resident

    def tool_format(self, model_id: str) -> str | None:
        return None if model_id in self.no_tools else "hermes"

    def hint(self, upcoming: list[str]) -> None:
        self.hints.append(list(upcoming))

    def too_big(self, model_id: str) -> str | None:
        return f"{model_id} needs more than the budget (FAKE)" if model_id in self.big else None

    def models_called(self) -> list[str]:
        return [r.model for r in self.records]


def cloud_config(**kw: Any) -> CloudConfig:
    """A cloud configuration for the fakes (nothing listens at its URL: FakeCloud never connects)."""
    return CloudConfig(**{"base_url": "http://127.0.0.1:9", "model": "big-cloud", "escalate_below": None, **kw})


class FakeCloud:
    """A FAKE cloud client: streams scripted texts; fails before or after the first one when told to."""

    def __init__(self, texts: list[str] | None = None, *, config: CloudConfig | None = None,
                 fail_before: bool = False, fail_after: int | None = None) -> None:
        self.config = config or cloud_config()
        self.texts = texts if texts is not None else ["cloud ", "answer"]
        self.fail_before, self.fail_after = fail_before, fail_after
        self.tool_calls: list[dict[str, Any]] = []  # [{id, name, arguments (JSON text)}] the cloud "calls"
        self.calls: list[dict[str, Any]] = []

    async def stream_chat(self, messages: list[dict[str, str]], *, reason: str, max_tokens: int | None,
                          temperature: float, top_p: float, stop: list[str], seed: int | None,
                          result: CloudResult, response_format: dict | None = None,
                          tools: dict | None = None) -> AsyncIterator[str]:
        self.calls.append({"messages": messages, "reason": reason, "max_tokens": max_tokens,
                           "temperature": temperature, "response_format": response_format, "tools": tools})
        result.tool_calls = [dict(c) for c in self.tool_calls]
        result.attempts = 1
        if self.fail_before:
            result.statuses.append(503)
            raise CloudUnavailableError("scripted: the cloud is down")
        result.left_device, result.bytes_sent = True, 100
        for i, text in enumerate(self.texts):
            if self.fail_after is not None and i == self.fail_after:
                raise CloudUnavailableError("scripted: the stream broke")
            result.tokens += 1
            yield text
        result.statuses.append(200)
        result.ttft_s, result.total_s = 0.002, 0.02
        result.usage = {"prompt_tokens": 11, "completion_tokens": result.tokens}

    def describe(self) -> dict[str, Any]:
        return {"model": self.config.model, "host": self.config.host, "breaker": "closed",
                "calls": {"ok": len(self.calls), "failed": 0, "cancelled": 0, "refused_open_circuit": 0}}

    async def aclose(self) -> None:
        return None


@dataclass
class ManualClock:
    """A clock that moves only when told."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


__all__ = ["FAKE_YAML", "FakeCloud", "FakeRuntime", "FakeSession", "ManualClock", "Record", "Reply",
           "cloud_config", "fake_registry"]
