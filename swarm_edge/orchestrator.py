"""Plans and runs requests: single, cascade, ensemble, pipeline, decompose.

`stream()` is the one path every front end takes (the CLI in-process, the daemon's OpenAI and Ollama
endpoints). It yields a `start` event once the model whose output the caller will see is leased (so
callers can still turn queue and budget errors into proper answers before they commit to a streamed
response), then `token` events, then one `done` event carrying the Answer and its trace.

Plans (the trace's `plan`, each model call one entry of its `steps`):
- single: the route's model answers (also any explicit model id).
- cascade (route `strategy: cascade`): the route's models in order; each but the last answers with its
  token log-probabilities measured, and its answer is kept when the mean is >= the route's `min_logprob`,
  else the next model answers. The tried answer is held back, so the caller sees only the kept one.
- ensemble (route `strategy: ensemble`): every model of the route answers; label answers are voted on
  (ties: the surest model), free text is chosen by mean log-probability.
- pipeline (`model: "pipeline:NAME"`): models.yaml's steps in order, each routed by its task, each output
  fed to the next step; every step's output is shown.
- decompose (model `auto`, the request names two or more tasks joined by "and"/"then"): the planner model
  writes the subtasks as JSON constrained by a JSON schema (a grammar in llama.cpp); each subtask is
  routed and answered in order with the outputs it depends on, the scheduler is told which models come
  next (prefetch, furthest-future eviction), and the outputs are shown one after the other. A plan that
  is not usable (one subtask, unknown tasks) falls back to single/cascade.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from swarm_edge import calc, decompose, selfcheck
from swarm_edge.cloud import CloudResult
from swarm_edge.config import Settings
from swarm_edge.engine import Engine
from swarm_edge.errors import (
    BudgetError,
    BusyError,
    CloudUnavailableError,
    ConfigError,
    InferenceError,
    ModelLoadError,
    UnknownModelError,
)
from swarm_edge.events import Start, Token
from swarm_edge.registry import ModelSpec, Registry
from swarm_edge.router import Route, instruction_head
from swarm_edge.workers import GenerateRequest

AUTO = "auto"
CLOUD = "cloud"
# what `on_local_failure` escalates: a crash or failed generation, a load refused by the budget or one that failed
# or timed out, no room or no queue slot in time (BusyError)
LOCAL_FAILURES = (InferenceError, BudgetError, ModelLoadError, BusyError)
PIPELINE_PREFIX = "pipeline:"
SEPARATOR = "\n\n"  # between the shown outputs of a multi-step plan
CALC_SYSTEM = ("Reply with one arithmetic expression that computes the answer. "
               "Use numbers, + - * / and parentheses only.")
CALC_EXAMPLES = [  # one worked pair: small models copy the form of an example far better than they follow rules
    {"role": "user", "content": "A book costs $12 and a pen costs $3. How much do 2 books and 4 pens cost in dollars?"},
    {"role": "assistant", "content": "2 * 12 + 4 * 3"},
]


@dataclass
class Answer:
    """The text of an answer plus its trace."""

    text: str
    model: str
    route: Route
    finish_reason: str
    timings: dict[str, float | None] = field(default_factory=dict)
    tokens: int = 0
    prompt_tokens: int | None = None
    left_device: bool = False
    plan: str = "single"
    steps: list[dict[str, Any]] = field(default_factory=list)
    escalation: dict[str, Any] | None = None  # the cloud fallback: why, what was redacted, what happened

    def to_dict(self) -> dict:
        """JSON-ready form (what `ask --json` prints)."""
        d = asdict(self)
        d["route"] = self.route.to_dict()
        return d

    def trace(self) -> dict:
        """The `swarm` object of API responses: who answered, why, every step, and where the time went."""
        return {"model": self.model, "route": self.route.to_dict(), "plan": self.plan, "steps": self.steps,
                "timings": self.timings, "tokens": self.tokens, "prompt_tokens": self.prompt_tokens,
                "left_device": self.left_device, "escalation": self.escalation}


def ask(prompt: str, registry: Registry, settings: Settings, *, budget: int | str | None = None,
        **kwargs) -> Answer:
    """Answer one prompt in this process (its models run in worker processes inside the budget)."""

    async def run() -> Answer:
        engine = Engine(registry, settings, budget=budget, spare=False)
        try:
            return await ask_async(prompt, engine, **kwargs)
        finally:
            await engine.close()

    return asyncio.run(run())


async def ask_async(prompt: str, engine: Engine, *, system: str | None = None,
                    on_token: Callable[[str], None] | None = None, **kwargs) -> Answer:
    """Route a prompt (or use `model_id`), make sure the models' files are here and stream the answer."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    answer = None
    async with contextlib.aclosing(stream(engine, messages=messages, **kwargs)) as events:
        async for event in events:
            if event["type"] == "token" and on_token:
                on_token(event["text"])
            elif event["type"] == "done":
                answer = event["answer"]
    assert answer is not None  # stream() always ends with done or raises
    return answer


def route(engine: Engine, text: str) -> Route:
    """Which task and model `text` would go to, without generating (blocking: call from a thread)."""
    return engine.route(text, engine.resident())


async def route_async(engine: Engine, text: str) -> Route:
    """`route` from async code: the embedding runs in a thread."""
    return await asyncio.to_thread(engine.route, text, engine.resident())


def _last_user_text(messages: list[dict[str, str]]) -> str:
    return next((m["content"] for m in reversed(messages) if m.get("role") == "user"), messages[-1]["content"])


# ---------------------------------------------------------------- one model call


@dataclass
class _Call:
    """What a model call produced: its text, the worker's done event, and its timings."""

    model: str
    text: str = ""
    done: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float | None] = field(default_factory=dict)
    chunks: list[str] = field(default_factory=list)

    def step(self, task: str, role: str, confidence: float | None = None, **extra) -> dict[str, Any]:
        d = {"task": task, "model": self.model, "role": role, "confidence": confidence,
             "tokens": self.done.get("chunks", 0), "timings": self.timings}
        if self.done.get("mean_logprob") is not None:
            d["mean_logprob"] = self.done["mean_logprob"]
        d.update(extra)
        return d


async def _call(engine: Engine, spec: ModelSpec, request: GenerateRequest, *, fetch=None,
                progress_factory=None) -> AsyncIterator[dict[str, Any]]:
    """One model call: yields `leased`, then `token` events, then `result` with the _Call."""
    if spec.kind == "embedding":
        raise ConfigError(f"{spec.id} is an embedding model; pick a model that generates text")
    call = _Call(spec.id)
    async with engine.session(spec.id, fetch=fetch, progress_factory=progress_factory) as session, \
            contextlib.aclosing(session.generate(request)) as events:
        async for event in events:
            if isinstance(event, Start):
                yield {"type": "leased", "model": spec.id}
            elif isinstance(event, Token):
                call.chunks.append(event.text)
                yield {"type": "token", "text": event.text}
            else:
                call.done = {k: v for k, v in asdict(event.result).items() if v is not None}
    call.text = "".join(call.chunks)
    call.timings = session.timings
    yield {"type": "result", "call": call}


async def _quiet(engine: Engine, spec: ModelSpec, request: GenerateRequest, **kw) -> _Call:
    """A model call whose tokens are held back (cascade tries, ensemble members, the planner)."""
    async with contextlib.aclosing(_call(engine, spec, request, **kw)) as events:
        async for ev in events:
            if ev["type"] == "result":
                return ev["call"]
    raise InferenceError(f"{spec.id} ended without a result")  # _call always ends with one or raises


# ---------------------------------------------------------------- answering one task


def _request(spec: ModelSpec, messages: list[dict[str, str]] | None, common: dict[str, Any], *,
             prompt: str | None = None, **extra) -> GenerateRequest:
    """The worker request for chat `messages` (or a raw completion `prompt`) with the caller's sampling."""
    kw = {**common, "max_tokens": common.get("max_tokens") or spec.max_tokens, **extra}
    if prompt is not None:
        return GenerateRequest(prompt=prompt, **kw)
    if spec.kind == "completion":  # no template: the conversation's text is what the model continues
        turns = [m for m in messages if m.get("role") != "system"] or messages
        return GenerateRequest(prompt="\n".join(m["content"] for m in turns), **kw)
    return GenerateRequest(messages=messages, **kw)


def _order(route: Route, spec_route, strategy: str) -> list[str]:
    """The models a task may use, in turn: the route's model, then (cascade, ensemble, calculator) the ones
    listed after it in models.yaml. A model the route does not list (router.unsure_model, the generalist an
    unsure route goes to) answers alone: the route's thresholds were fitted for its own models."""
    if spec_route is None or strategy == "single" or route.model not in spec_route.models:
        return [route.model]
    listed = spec_route.models
    return list(dict.fromkeys(listed[listed.index(route.model):]))


def _shown(call: _Call, steps: list[dict[str, Any]]):
    """The events that show an answer which was generated held back (cascade try, vote, calculator)."""
    yield {"type": "visible", "model": call.model}
    for chunk in call.chunks:
        yield {"type": "token", "text": chunk}
    yield {"type": "solved", "call": call, "steps": steps}


async def _solve(engine: Engine, task: str, route: Route, messages: list[dict[str, str]], common: dict[str, Any],
                 *, strategy: str = "single", fetch=None, progress_factory=None,
                 esc: _Escalation | None = None) -> AsyncIterator[dict[str, Any]]:
    """Answer one task: yields `visible` (the shown answer's model is leased), `token`s, then `solved`."""
    registry = engine.registry
    spec_route = registry.routes.get(task)
    own_system = any(m.get("role") == "system" for m in messages)
    tried: list[dict[str, Any]] = []  # calculator attempts that wrote no usable expression
    if spec_route is not None and spec_route.tool == "calculator" and not own_system:
        order = _order(route, spec_route, strategy)
        for i, mid in enumerate(order):
            spec = registry.get(mid)
            last = i == len(order) - 1
            call = await _quiet(engine, spec, _request(spec, [{"role": "system", "content": CALC_SYSTEM},
                                                              *CALC_EXAMPLES, *messages],
                                                       {**common, "max_tokens": 64},
                                                       logprobs=not last or bool(common.get("logprobs"))),
                                fetch=fetch, progress_factory=progress_factory)
            expr = calc.expression_in(call.text)
            try:  # bounded and cheap (calc.py: < 1 ms worst case measured), so it runs on the loop
                value = calc.show(calc.evaluate(expr)) if expr is not None else None
            except calc.CalcError:
                expr = value = None
            sure = call.done.get("mean_logprob")
            keep = expr is not None and (last or sure is None or sure >= spec_route.min_logprob)
            tried.append(call.step(task, "calculator", route.confidence, wrote=call.text[:200], expression=expr,
                                   accepted=keep))
            if not keep:
                continue
            call.text = f"{expr} = {value}\nAnswer: {value}"
            call.chunks = [call.text]
            for ev in _shown(call, tried):
                yield ev
            return
    if spec_route is not None and spec_route.system and not own_system:
        messages = [{"role": "system", "content": spec_route.system}, *messages]
    models = _order(route, spec_route, strategy)
    if strategy == "ensemble" and len(models) > 1:
        calls = []
        for mid in models:
            calls.append(await _quiet(engine, registry.get(mid), _request(registry.get(mid), messages, common,
                                                                          logprobs=True),
                                      fetch=fetch, progress_factory=progress_factory))
        winner = _vote(task, calls)
        steps = tried + [c.step(task, "vote", route.confidence, chosen=c is winner) for c in calls]
        for ev in _shown(winner, steps):
            yield ev
        return
    steps: list[dict[str, Any]] = tried
    threshold = spec_route.min_logprob if spec_route is not None else 0.0
    *tries, final = models  # only a cascade has tries: single has one model, an ensemble of several returned above
    async def judged(mid: str, role: str) -> tuple[_Call, bool]:
        """A held-back answer with its token log-probs measured, and whether it is sure enough to keep."""
        spec = registry.get(mid)
        call = await _quiet(engine, spec, _request(spec, messages, common, logprobs=True),
                            fetch=fetch, progress_factory=progress_factory)
        sure = call.done.get("mean_logprob")
        echo = _echoes(call.text, messages)  # self-check: a rewrite or translation that copies its input
        request = _last_user_text(messages)
        flags = selfcheck.problems(task, request, _material(request), call.text)  # checks per task
        # nothing generated: nothing to be unsure of
        keep = (sure is None or sure >= threshold) and not echo and not flags
        steps.append(call.step(task, role, route.confidence, accepted=keep, threshold=threshold,
                               **({"echo": True} if echo else {}), **({"checks": flags} if flags else {})))
        return call, keep

    for mid in tries:
        call, keep = await judged(mid, "cascade")
        if keep:
            for ev in _shown(call, steps):
                yield ev
            return
    if strategy == "cascade" and esc is not None and esc.usable and esc.config.on_cascade_unsure:
        # the last local model (the only one, on a device whose cascade lost its bigger models) is measured too
        # and held back: if it is unsure as well, the cloud answers
        call, keep = await judged(final, "cascade-final")
        if not keep:
            last = steps[-1]
            if last.get("echo"):
                because = "its answer repeats the input"
            elif last.get("checks"):
                because = "; ".join(last["checks"])
            else:
                because = f"mean logprob {last.get('mean_logprob', float('nan')):.2f} < {threshold}"
            why = f"cascade: the last local model {final} is unsure too ({because})"
            try:
                async with contextlib.aclosing(_cloud(engine, esc, messages, common, why, task, steps)) as events:
                    async for ev in events:
                        yield ev
                return
            except CloudUnavailableError as exc:  # raised only before any cloud text was shown
                esc.note(f"cloud unavailable ({exc}); the last local answer is shown")
                last["accepted"] = True
        for ev in _shown(call, steps):
            yield ev
        return
    spec = registry.get(final)
    async with contextlib.aclosing(_call(engine, spec, _request(spec, messages, common), fetch=fetch,
                                         progress_factory=progress_factory)) as events:
        async for ev in events:
            if ev["type"] == "leased":
                yield {"type": "visible", "model": final}
            elif ev["type"] == "token":
                yield ev
            else:
                call = ev["call"]
    steps.append(call.step(task, "answer" if not steps else "cascade-final", route.confidence))
    yield {"type": "solved", "call": call, "steps": steps}


_LABEL = re.compile(r"[^\w\s-]+")


def _norm(text: str) -> str:
    return " ".join(_LABEL.sub(" ", text.lower()).split())


def _echoes(answer: str, messages: list[dict[str, str]]) -> bool:
    """Whether an answer only repeats the request's material (small models do that instead of rewriting)."""
    material = _material(_last_user_text(messages))
    return bool(material) and _norm(answer) == _norm(material)


def _vote(task: str, calls: list[_Call]) -> _Call:
    """The ensemble's choice: majority of normalised first lines for label tasks, else the surest answer."""
    def sureness(c: _Call) -> float:
        return c.done.get("mean_logprob") if c.done.get("mean_logprob") is not None else -1e9

    if task != "classify":
        return max(calls, key=sureness)
    labels = {id(c): _LABEL.sub("", c.text.strip().splitlines()[0] if c.text.strip() else "").strip().lower()
              for c in calls}
    counts = Counter(labels.values())
    top = max(counts.values())
    return max((c for c in calls if counts[labels[id(c)]] == top), key=sureness)


# ---------------------------------------------------------------- decomposition

async def read_request(engine: Engine, text: str) -> decompose.Reading:
    """How `text` reads (decompose.py): its subtasks when it asks for several tasks, else none.

    Each candidate piece is routed by the engine's router (the trained head, or the keyword rules without it).
    """
    def route_piece(piece: str) -> tuple[str, float]:
        r = engine.route(piece)
        return r.task, r.confidence

    spec = engine.registry.router
    return await asyncio.to_thread(decompose.read, text, route_piece, min_confidence=spec.split_confidence)


def _instruction(text: str) -> str:
    """The request without its pasted material: the text before a colon followed by a newline or a long tail."""
    head = instruction_head(text)
    return head if len(head) < len(text.strip()) else text.strip()


def _material(text: str) -> str:
    """The pasted material of a request: what follows its instruction head (empty if there is none)."""
    head = instruction_head(text)
    rest = text.strip()[len(head):]
    return rest.lstrip(":\n ").strip()


def plan_schema(tasks: list[str], max_steps: int = 4) -> dict:
    """The JSON schema the planner's output is constrained to."""
    return {
        "type": "object",
        "properties": {"subtasks": {"type": "array", "minItems": 1, "maxItems": max_steps, "items": {
            "type": "object",
            "properties": {"task": {"type": "string", "enum": tasks},
                           "instruction": {"type": "string"},
                           "uses_previous": {"type": "boolean"}},
            "required": ["task", "instruction", "uses_previous"]}}},
        "required": ["subtasks"],
    }


PLANNER_SYSTEM = (
    "You split a user's request into the separate tasks it asks for, in the order they must be done. "
    "Task types: {tasks}. For each task give its type, a short imperative instruction, and uses_previous: "
    "true if it works on the previous task's output. Answer with JSON only.")

PLANNER_EXAMPLE = [
    {"role": "user", "content": "Request: Fix the grammar of this note and then count how many words it has\n"
                                "Task types named in it, in order: rewrite, math"},
    {"role": "assistant", "content": json.dumps({"subtasks": [
        {"task": "rewrite", "instruction": "Fix the grammar of the note", "uses_previous": False},
        {"task": "math", "instruction": "Count the words in the corrected note", "uses_previous": True}]})},
]


async def make_plan(engine: Engine, text: str, *, fetch=None, progress_factory=None, named: list[str] | None = None,
                    cache_prompt: bool = True) -> tuple[list[dict], _Call]:
    """Ask the planner model for the subtasks of `text`: ([{task, instruction, uses_previous}], the planner call).

    `named`: the tasks the reading found, in order (the keyword rules' when None); they go with the request.
    """
    registry = engine.registry
    planner = registry.get(registry.router.planner)
    tasks = list(registry.routes)
    instruction = _instruction(text)
    # the reading of the request goes with it: the 0.5B planner alone mixed up summarize and translate
    # in 6 of 22 compound requests (benchmarks/bench_decompose.py, the old suite)
    if named is None:
        named = engine.named_tasks(instruction)
    messages = [{"role": "system", "content": PLANNER_SYSTEM.format(tasks=", ".join(tasks))}, *PLANNER_EXAMPLE,
                {"role": "user", "content": f"Request: {instruction}\n"
                                            f"Task types named in it, in order: {', '.join(named) or 'none found'}"}]
    request = GenerateRequest(messages=messages, max_tokens=200, temperature=0.0,
                              json_schema=plan_schema(tasks), cache_prompt=cache_prompt)
    call = await _quiet(engine, planner, request, fetch=fetch, progress_factory=progress_factory)
    try:
        subtasks = json.loads(call.text)["subtasks"]
    except (ValueError, KeyError, TypeError):
        return [], call  # cut off by max_tokens: not a plan
    return [s for s in subtasks if isinstance(s, dict) and s.get("task") in registry.routes], call


def _subtask_prompt(sub: dict, material: str, previous: str | None) -> str:
    """A subtask's prompt: its instruction, then the previous output it works on, or else the pasted material
    (none when its words quote their own: "translate 'good morning' into Japanese")."""
    if sub.get("uses_previous") and previous:
        body = previous
    else:
        body = "" if sub.get("own_material") else material
    instruction = sub["instruction"].strip().rstrip(" :")
    return f"{instruction}:\n\n{body}" if body else instruction


# ---------------------------------------------------------------- the cloud fallback


class _Escalation:
    """One request's view of the cloud: may it go there, why it did (or would have), and what happened."""

    def __init__(self, engine: Engine, allowed: bool) -> None:
        self.engine, self.allowed = engine, allowed
        self.client = engine.cloud
        self.config = self.client.config if self.client is not None else None
        self.policy = engine.cloud_policy
        self.target = f"{CLOUD}:{self.config.model}" if self.config else CLOUD
        self.reason: str | None = None
        self.outcome: str | None = None
        self.notes: list[str] = []
        self.result = None
        self.left_device = False

    @property
    def usable(self) -> bool:
        return self.client is not None and self.allowed

    def why_not(self) -> str:
        if self.engine.offline:
            return "offline: no cloud client exists in this process"
        if self.client is None:
            return ("not configured: set SWARM_EDGE_CLOUD_URL and SWARM_EDGE_CLOUD_MODEL, or a cloud: section in "
                    f"{self.engine.registry.path}")
        return "the request says allow_cloud: false"

    def reason_for(self, route: Route) -> str | None:
        """Why a routed request should go to the cloud (router unsure, a hard task), or None."""
        cfg = self.policy
        if cfg is None:
            return None
        if route.task in cfg.hard_tasks:
            return f"task {route.task!r} is one of cloud.hard_tasks"
        if cfg.escalate_below is not None and route.confidence < cfg.escalate_below:
            return f"router unsure: confidence {route.confidence:.2f} < {cfg.escalate_below}"
        return None

    def considered(self, why: str) -> bool:
        """Record a reason to escalate; True if the request may actually go (else the trace says why not)."""
        if self.usable:
            return True
        if self.reason is None:
            self.reason, self.outcome = why, f"stayed on the device: {self.why_not()}"
        return False

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.outcome = "unavailable"

    def trace(self) -> dict[str, Any] | None:
        if self.reason is None and not self.notes:
            return None
        d: dict[str, Any] = {"reason": self.reason, "target": self.target, "outcome": self.outcome}
        if self.result is not None:
            d.update(redacted=self.result.redacted, bytes_sent=self.result.bytes_sent, attempts=self.result.attempts,
                     statuses=self.result.statuses)
        if self.notes:
            d["notes"] = self.notes
        return d


async def _cloud(engine: Engine, esc: _Escalation, messages: list[dict[str, str]], common: dict[str, Any],
                 why: str, task: str, steps: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """The cloud answers (redacted, restored as it streams): yields `visible` with its first text, `token`s,
    then `solved`. Raises CloudUnavailableError only before any text was yielded; a stream that breaks later
    ends the answer there and the trace says so."""
    res = CloudResult(esc.config.model)
    esc.reason, esc.result = why, res
    call = _Call(esc.target)
    shown = False
    texts = esc.client.stream_chat(messages, reason=why, max_tokens=common.get("max_tokens"),
                                   temperature=common["temperature"], top_p=common["top_p"], stop=common["stop"],
                                   seed=common["seed"], result=res)
    try:
        async with contextlib.aclosing(texts):
            async for text in texts:
                if not shown:
                    shown = True
                    yield {"type": "visible", "model": call.model}
                call.chunks.append(text)
                yield {"type": "token", "text": text}
    except CloudUnavailableError as exc:
        if not shown:
            raise
        esc.note(str(exc))
        res.finish_reason = "error"
    finally:
        esc.left_device = esc.left_device or res.left_device
    if esc.outcome is None:
        esc.outcome = "answered"
    if not shown:
        yield {"type": "visible", "model": call.model}
    call.text = "".join(call.chunks)
    call.done = {"chunks": res.tokens, "finish_reason": res.finish_reason,
                 "prompt_tokens": (res.usage or {}).get("prompt_tokens")}
    call.timings = {"ttft_s": res.ttft_s, "generate_s": res.total_s, "total_s": res.total_s}
    steps.append(call.step(task, "cloud", None, reason=why, redacted=res.redacted, attempts=res.attempts,
                           bytes_sent=res.bytes_sent))
    yield {"type": "solved", "call": call, "steps": steps}


async def _escalate(engine: Engine, esc: _Escalation, top: Route, msgs: list[dict[str, str]], common: dict[str, Any],
                    why: str, t0: float, t_route: float | None, *, system: bool = True) -> AsyncIterator[dict]:
    """A whole answer from the cloud (start, tokens, done), with the route's system prompt unless the request
    brings its own (or `system` is False). Raises CloudUnavailableError before its first event."""
    spec_route = engine.registry.routes.get(top.task)
    if system and spec_route is not None and spec_route.system and not any(m.get("role") == "system" for m in msgs):
        msgs = [{"role": "system", "content": spec_route.system}, *msgs]
    up = Route(task=top.task, model=esc.target, target="cloud", confidence=top.confidence,
               reason=f"{top.reason}; to the cloud: {why}", scores=top.scores)
    relay = _Relay(up)
    async with contextlib.aclosing(_cloud(engine, esc, msgs, common, why, top.task, [])) as events:
        async for ev in events:
            if (out := relay(ev)) is not None:
                yield out
    yield {"type": "done", "answer": _answer(relay.call.text, relay.call, up, "cloud", relay.steps, t0,
                                             relay.t_first, time.perf_counter(), t_route)}


# ---------------------------------------------------------------- the one entry point


async def stream(engine: Engine, *, allow_cloud: bool = True, **kwargs) -> AsyncIterator[dict[str, Any]]:
    """Answer chat `messages` (or a plain `prompt`): yields start, token..., done (with the Answer).

    Keyword arguments: messages | prompt, model_id (a model id, "auto", "cloud" or "pipeline:NAME"),
    max_tokens, temperature, top_p, stop, seed, cache_prompt, progress_factory, fetch, decompose, task (answer as
    this task's route: no routing, no plan), logprobs (every call measures its mean token log-prob). `allow_cloud=False`
    keeps this request on the device whatever the configuration says.
    """
    esc = _Escalation(engine, allow_cloud)
    async with contextlib.aclosing(_stream(engine, esc, **kwargs)) as events:
        async for ev in events:
            if ev["type"] == "done":
                ev["answer"].escalation = esc.trace()
                ev["answer"].left_device = esc.left_device
            yield ev


async def _stream(engine: Engine, esc: _Escalation, *, messages: list[dict[str, str]] | None = None,
                  prompt: str | None = None, model_id: str | None = None, max_tokens: int | None = None,
                  temperature: float = 0.0, top_p: float = 1.0, stop: list[str] | None = None, seed: int | None = None,
                  cache_prompt: bool = True, progress_factory=None, fetch: bool | None = None,
                  decompose: bool = True, task: str | None = None,
                  logprobs: bool = False) -> AsyncIterator[dict[str, Any]]:
    t0 = time.perf_counter()
    if (messages is None) == (prompt is None):
        raise ValueError("stream() needs exactly one of messages or prompt")
    common = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=list(stop or []), seed=seed,
                  cache_prompt=cache_prompt)
    if logprobs:  # every call measures its mean token log-prob (swarm-edge tune reads it from the steps)
        common["logprobs"] = True
    kw = dict(fetch=fetch, progress_factory=progress_factory)
    text = prompt if prompt is not None else _last_user_text(messages)
    registry = engine.registry
    t_route = None

    if model_id and model_id.startswith(PIPELINE_PREFIX):
        name = model_id[len(PIPELINE_PREFIX):]
        if name not in registry.pipelines:
            raise UnknownModelError(f"unknown pipeline {name!r}; pipelines in {registry.path}: "
                                    + (", ".join(sorted(registry.pipelines)) or "none"))
        pipe = registry.pipelines[name]
        subtasks = [{"task": t, "instruction": (pipe.instructions[i] if pipe.instructions else ""),
                     "uses_previous": i > 0} for i, t in enumerate(pipe.steps)]
        top = Route(task=pipe.steps[0], model=registry.routes[pipe.steps[0]].models[0], confidence=1.0,
                    reason=f"pipeline {name!r}: {' -> '.join(pipe.steps)}")
        plan, planner_call, reading_step = "pipeline", None, None
    elif model_id and model_id not in (AUTO, CLOUD):
        spec = registry.get(model_id)
        request = _request(spec, messages, common, prompt=prompt)
        top = Route(task="explicit", model=spec.id, confidence=1.0, reason="model chosen by the caller")
        async for ev in _single(engine, spec, request, top, t0, **kw):
            yield ev
        return
    else:
        forced = None
        if model_id == CLOUD:
            if esc.client is None:
                raise ConfigError(f"model \"cloud\": the cloud fallback is off here ({esc.why_not()})")
            forced = "requested by the caller (model \"cloud\")"
        if forced and esc.allowed:  # nothing to decide: no routing on the way to the first token
            top = Route(task="explicit", model=esc.target, target="cloud", confidence=1.0,
                        reason="model chosen by the caller")
        elif task is not None:  # the caller names the task: its route answers, unrouted and unsplit
            if task not in registry.routes:
                raise UnknownModelError(f"unknown task {task!r}; tasks in {registry.path}: "
                                        + ", ".join(sorted(registry.routes)))
            top = Route(task=task, model=registry.routes[task].models[0], confidence=1.0,
                        reason="task chosen by the caller")
            decompose = False
        else:
            top = await route_async(engine, text)
        t_route = time.perf_counter() - t0
        why = forced or esc.reason_for(top)
        if why and esc.considered(why):
            msgs = messages if messages is not None else [{"role": "user", "content": text}]
            try:
                async with contextlib.aclosing(_escalate(engine, esc, top, msgs, common, why, t0, t_route,
                                                         system=not forced)) as events:
                    async for ev in events:
                        yield ev
            except CloudUnavailableError as exc:
                esc.note(f"cloud unavailable ({exc}); answered on the device")
            else:
                return
        if prompt is not None:  # a raw completion prompt: no template, no plan; the routed model continues it
            spec = registry.get(top.model)
            async for ev in _single(engine, spec, _request(spec, None, common, prompt=prompt), top, t0, **kw):
                yield ev
            return
        subtasks, planner_call, plan, reading_step = [], None, "single", None
        if decompose and registry.router.decompose:
            t_read = time.perf_counter()
            reading = await read_request(engine, text)
            if reading.subtasks and registry.router.planner:
                subtasks, planner_call = await make_plan(engine, text, named=reading.tasks,
                                                         cache_prompt=cache_prompt, **kw)
            elif reading.subtasks:
                subtasks = reading.subtasks
                reading_step = {"task": "plan", "model": None, "role": "planner", "confidence": None,
                                "tokens": 0, "how": "rules + the router's head, piece by piece",
                                "timings": {"total_s": round(time.perf_counter() - t_read, 4)},
                                "subtasks": [s["task"] for s in subtasks]}
            if len(subtasks) >= 2:
                plan = "decompose"
                by = planner_call.model if planner_call else "reading the request (rules + router head)"
                top = Route(task=top.task, model=top.model, target=top.target, confidence=top.confidence,
                            reason=f"compound request: {len(subtasks)} subtasks planned by {by}",
                            scores=top.scores)
        if plan == "single":
            strategy = registry.routes[top.task].strategy if top.task in registry.routes else "single"
            plan = strategy if strategy != "single" else "single"
            msgs = messages if messages is not None else [{"role": "user", "content": text}]
            steps = [planner_call.step("plan", "planner", note="not a usable plan; answered as one request")] \
                if planner_call else []
            started = False
            try:
                async for ev in _finish_one(engine, top, msgs, common, strategy, t0, t_route, plan, steps, esc=esc,
                                            **kw):
                    started = started or ev["type"] == "start"
                    yield ev
            except LOCAL_FAILURES as exc:
                why = f"local failure: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                if started or not esc.config or not esc.config.on_local_failure or not esc.considered(why):
                    raise
                try:
                    async with contextlib.aclosing(_escalate(engine, esc, top, msgs, common, why, t0,
                                                             t_route)) as events:
                        async for ev in events:
                            yield ev
                except CloudUnavailableError as cloud_exc:
                    esc.note(f"cloud unavailable ({cloud_exc})")
                    raise exc from None
            return

    # multi-step: pipeline or decompose
    steps: list[dict[str, Any]] = []
    if planner_call is not None:
        steps.append(planner_call.step("plan", "planner", subtasks=[s["task"] for s in subtasks]))
    elif plan == "decompose" and reading_step is not None:
        steps.append(reading_step)
    system = [m for m in (messages or []) if m.get("role") == "system"]
    if plan == "decompose":
        material = reading.material if reading_step is not None else _material(text)
    else:
        material = text
    previous: str | None = None
    shown: list[str] = []
    relay = _Relay(top)
    try:
        for i, sub in enumerate(subtasks):
            if plan == "pipeline":
                body = previous if previous is not None else material
                step_prompt = sub["instruction"].format(input=body) if sub["instruction"] else body
            else:
                step_prompt = _subtask_prompt(sub, material, previous)
            step_route = await route_async(engine, step_prompt) if plan == "decompose" else None
            task = sub["task"]
            model = registry.routes[task].models[0]
            if step_route is not None and step_route.task == task:
                model = step_route.model  # the router agrees on the task: let it pick (it prefers resident models)
            r = Route(task=task, model=model, confidence=step_route.confidence if step_route else 1.0,
                      reason=f"subtask {i + 1}/{len(subtasks)}")
            engine.hint([registry.routes[s["task"]].models[0] for s in subtasks[i:]])
            strategy = registry.routes[task].strategy
            if i > 0 and relay.started:
                yield {"type": "token", "text": SEPARATOR}
            async with contextlib.aclosing(_solve(engine, task, r, [*system, {"role": "user", "content": step_prompt}],
                                                  common, strategy=strategy, esc=esc, **kw)) as events:
                async for ev in events:
                    if (out := relay(ev)) is not None:
                        yield out
            for s in relay.steps:
                s["subtask"] = i + 1
                s["instruction"] = sub["instruction"] or task
            steps.extend(relay.steps)
            previous = relay.call.text
            shown.append(relay.call.text)
    finally:
        engine.hint([])  # the plan is over (or failed): no model is needed next
    t_end = time.perf_counter()
    yield {"type": "done", "answer": _answer(SEPARATOR.join(shown), relay.call, top, plan, steps, t0, relay.t_first,
                                             t_end, t_route)}


async def _single(engine, spec, request, top, t0, **kw):
    """An explicit model: one call, streamed."""
    t_first = None
    async with contextlib.aclosing(_call(engine, spec, request, **kw)) as events:
        async for ev in events:
            if ev["type"] == "leased":
                yield {"type": "start", "model": spec.id, "route": top}
            elif ev["type"] == "token":
                if t_first is None:
                    t_first = time.perf_counter()
                yield ev
            else:
                call = ev["call"]
    steps = [call.step(top.task, "answer", 1.0)]
    yield {"type": "done", "answer": _answer(call.text, call, top, "single", steps, t0, t_first,
                                             time.perf_counter(), None)}


async def _finish_one(engine, top, msgs, common, strategy, t0, t_route, plan, steps, *, esc=None, **kw):
    """One task answered by its route's strategy (single, cascade, ensemble, calculator)."""
    relay = _Relay(top)
    async with contextlib.aclosing(_solve(engine, top.task, top, msgs, common, strategy=strategy, esc=esc,
                                          **kw)) as events:
        async for ev in events:
            if (out := relay(ev)) is not None:
                yield out
    yield {"type": "done", "answer": _answer(relay.call.text, relay.call, top, plan, steps + relay.steps, t0,
                                             relay.t_first, time.perf_counter(), t_route)}


class _Relay:
    """Turns `_solve` events into the caller's: one `start` for the whole answer, tokens (timing the first),
    and keeps each task's result and steps."""

    def __init__(self, top: Route) -> None:
        self.top, self.started, self.t_first = top, False, None
        self.call: _Call | None = None
        self.steps: list[dict[str, Any]] = []

    def __call__(self, ev: dict[str, Any]) -> dict[str, Any] | None:
        if ev["type"] == "visible" and not self.started:
            self.started = True
            return {"type": "start", "model": ev["model"], "route": self.top}
        if ev["type"] == "token":
            if self.t_first is None:
                self.t_first = time.perf_counter()
            return ev
        if ev["type"] == "solved":
            self.call, self.steps = ev["call"], ev["steps"]
        return None


def _answer(text, call: _Call, top: Route, plan: str, steps: list[dict], t0, t_first, t_end, t_route) -> Answer:
    """The Answer: the shown text, the model of its last part, timings summed over every step."""
    def total(key):
        vals = [s["timings"].get(key) for s in steps if s.get("timings")]
        return _r(sum(v for v in vals if v is not None)) if vals else None

    timings = {"route_s": _r(t_route), "files_s": total("files_s"), "queue_s": total("queue_s"),
               "load_s": total("load_s"), "ttft_s": _r(t_first - t0 if t_first else None),
               "model_ttft_s": call.timings.get("model_ttft_s"), "decode_tok_s": call.timings.get("decode_tok_s"),
               "generate_s": total("generate_s"), "total_s": _r(t_end - t0)}
    shown_tokens = sum(s["tokens"] for s in steps if s.get("role") in ("answer", "cloud")
                       or (s.get("role") == "cascade-final" and s.get("accepted", True))
                       or s.get("accepted") or s.get("chosen"))
    return Answer(text=text, model=call.model, route=top, finish_reason=call.done.get("finish_reason", "stop"),
                  tokens=shown_tokens, prompt_tokens=call.done.get("prompt_tokens"), timings=timings,
                  plan=plan, steps=steps)


async def embed(engine: Engine, texts: list[str], model_id: str | None = None) -> tuple[str, list[list[float]], dict]:
    """Vectors for texts from `model_id` (or the registry's first embedding model): (model, vectors, timings)."""
    if model_id and model_id != AUTO:
        spec = engine.registry.get(model_id)
        if spec.kind != "embedding":
            raise ConfigError(f"{spec.id} is not an embedding model; embedding models here: "
                              + (", ".join(m.id for m in engine.registry if m.kind == "embedding") or "none"))
    else:
        spec = next((m for m in engine.registry if m.kind == "embedding"), None)
        if spec is None:
            raise ConfigError(f"{engine.registry.path} declares no embedding model")
    async with engine.session(spec.id) as session:
        vectors = await session.embed(texts)
    timings = session.timings
    return spec.id, vectors, {k: timings[k] for k in ("files_s", "queue_s", "load_s", "embed_s", "total_s", "tokens")}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


__all__ = ["AUTO", "PIPELINE_PREFIX", "Answer", "ask", "ask_async", "embed", "make_plan", "read_request",
           "plan_schema", "route", "route_async", "stream"]
