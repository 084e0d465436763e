"""Plans as data: what a request will do, decided by pure functions of the request, the route and the registry.

No function here does I/O or reads a clock, so every branch is a row of a table test (tests/fake/test_plan.py).
run.py performs what a decision needs (routing, reading the request, the planner, the cloud) and asks again.

The branch order of a request:
  pipeline:NAME -> an explicit model id -> model "cloud" (forced) / a named task / tools offered (task "tools") /
  a structured answer (task "json"; either routed, never split, when models.yaml has no such route) / routed
  -> escalate first? (a hard task, an unsure router, forced) -> a raw prompt (the routed model continues it)
  -> a compound request (decompose) -> the route's strategy (single, cascade, ensemble; calculator by tool)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from swarm_edge.errors import ConfigError, UnknownModelError
from swarm_edge.router import Route

if TYPE_CHECKING:
    from swarm_edge.orchestration.request import Request
    from swarm_edge.registry import Registry, RouteSpec

AUTO = "auto"
CLOUD = "cloud"
PIPELINE_PREFIX = "pipeline:"
JSON_TASK = "json"   # the route of requests whose answer must follow a JSON schema (response_format, format)
TOOLS_TASK = "tools"  # the route of requests that offer the model functions to call


@dataclass(frozen=True)
class Subtask:
    """One part of a multi-step plan: its task, its instruction, and what it works on."""

    task: str
    instruction: str = ""
    uses_previous: bool = False
    own_material: bool = False   # its words quote their own material ("translate 'good morning' ...")

    @classmethod
    def of(cls, d: dict[str, Any]) -> Subtask:
        """From the reading's or the planner's dict."""
        return cls(task=d["task"], instruction=d.get("instruction") or "", uses_previous=bool(d.get("uses_previous")),
                   own_material=bool(d.get("own_material")))


@dataclass(frozen=True)
class Entry:
    """The first decision: what a request is before anything is routed.

    kind: "pipeline" (subtasks and top known), "explicit" (one model, top known), "cloud" (model "cloud", allowed:
    top known), "task" (a named task: top known, never split), "route" (the router decides top).
    `forced`: the reason a request asked for the cloud (set for "cloud", and for "route" when it may not go).
    """

    kind: Literal["pipeline", "explicit", "cloud", "task", "route"]
    top: Route | None = None
    subtasks: tuple[Subtask, ...] = ()
    forced: str | None = None
    decompose: bool = True


FORCED = "requested by the caller (model \"cloud\")"


def entry(req: Request, registry: Registry, *, cloud_configured: bool, cloud_allowed: bool, target: str,
          why_not: str) -> Entry:
    """What a request is: a pipeline, one explicit model, the cloud, a named task, or one to route."""
    model_id = req.model_id
    tools, output = req.sampling.tools is not None, req.sampling.output is not None
    if tools and output:
        raise ConfigError("tools and a JSON response format in one request are not supported: send one or the other")
    structured = tools or output
    if model_id and model_id.startswith(PIPELINE_PREFIX):
        if structured:
            raise ConfigError("tools and response formats apply to one model's answer; pipelines cannot take them")
        return pipeline_entry(model_id[len(PIPELINE_PREFIX):], registry)
    if model_id and model_id not in (AUTO, CLOUD):
        spec = registry.get(model_id)
        return Entry("explicit", Route(task="explicit", model=spec.id, confidence=1.0,
                                       reason="model chosen by the caller"))
    forced = None
    if model_id == CLOUD:
        if not cloud_configured:
            raise ConfigError(f"model \"cloud\": the cloud fallback is off here ({why_not})")
        forced = FORCED
    if forced and cloud_allowed:  # nothing to decide: no routing on the way to the first token
        return Entry("cloud", Route(task="explicit", model=target, target="cloud", confidence=1.0,
                                    reason="model chosen by the caller"), forced=forced)
    if req.task is not None:  # the caller names the task: its route answers, unrouted and unsplit
        if req.task not in registry.routes:
            raise UnknownModelError(f"unknown task {req.task!r}; tasks in {registry.path}: "
                                    + ", ".join(sorted(registry.routes)))
        return Entry("task", Route(task=req.task, model=registry.routes[req.task].models[0], confidence=1.0,
                                   reason="task chosen by the caller"), forced=forced, decompose=False)
    shaped = TOOLS_TASK if tools else JSON_TASK if output else None
    if shaped is not None and shaped in registry.routes:  # the shape of the request decides: no routing, no split
        why = "functions offered" if tools else "the answer must follow a JSON schema"
        return Entry("task", Route(task=shaped, model=registry.routes[shaped].models[0], confidence=1.0,
                                   reason=f"{why}: task {shaped}"), forced=forced, decompose=False)
    return Entry("route", forced=forced, decompose=req.decompose and not structured)


def pipeline_entry(name: str, registry: Registry) -> Entry:
    if name not in registry.pipelines:
        raise UnknownModelError(f"unknown pipeline {name!r}; pipelines in {registry.path}: "
                                + (", ".join(sorted(registry.pipelines)) or "none"))
    pipe = registry.pipelines[name]
    subtasks = tuple(Subtask(t, pipe.instructions[i] if pipe.instructions else "", uses_previous=i > 0)
                     for i, t in enumerate(pipe.steps))
    top = Route(task=pipe.steps[0], model=registry.routes[pipe.steps[0]].models[0], confidence=1.0,
                reason=f"pipeline {name!r}: {' -> '.join(pipe.steps)}")
    return Entry("pipeline", top, subtasks)


def strategy_of(registry: Registry, task: str, *, structured: bool = False) -> str:
    """The route's strategy: single, cascade or ensemble (the calculator is a route's tool, on any strategy).
    Answers that must follow a schema are checked, not voted on: an ensemble is a cascade for them."""
    strategy = registry.routes[task].strategy if task in registry.routes else "single"
    return "cascade" if structured and strategy == "ensemble" else strategy


def order(route: Route, spec_route: RouteSpec | None, strategy: str) -> list[str]:
    """The models a task may use, in turn: the route's model, then (cascade, ensemble, calculator) the ones
    listed after it in models.yaml. A model the route does not list (router.unsure_model, the generalist an
    unsure route goes to) answers alone: the route's thresholds were fitted for its own models."""
    if spec_route is None or strategy == "single" or route.model not in spec_route.models:
        return [route.model]
    listed = spec_route.models
    return list(dict.fromkeys(listed[listed.index(route.model):]))


def compound(top: Route, subtasks: list[Subtask], planner: str | None) -> Route | None:
    """The route of a compound answer, or None when the subtasks are no plan (fewer than two)."""
    if len(subtasks) < 2:
        return None
    by = planner or "reading the request (rules + router head)"
    return Route(task=top.task, model=top.model, target=top.target, confidence=top.confidence,
                 reason=f"compound request: {len(subtasks)} subtasks planned by {by}", scores=top.scores)


def pipeline_prompt(sub: Subtask, body: str) -> str:
    """A pipeline step's prompt: its instruction with {input} filled, or the text as it is."""
    return sub.instruction.format(input=body) if sub.instruction else body


def subtask_prompt(sub: Subtask, material: str, previous: str | None) -> str:
    """A subtask's prompt: its instruction, then the previous output it works on, or else the pasted material
    (none when its words quote their own: "translate 'good morning' into Japanese")."""
    if sub.uses_previous and previous:
        body = previous
    else:
        body = "" if sub.own_material else material
    instruction = sub.instruction.strip().rstrip(" :")
    return f"{instruction}:\n\n{body}" if body else instruction


def subtask_route(sub: Subtask, routed: Route | None, registry: Registry, i: int, n: int) -> Route:
    """A subtask's route: its task's first model, or the router's model when the router agrees on the task
    (it prefers resident models)."""
    model = registry.routes[sub.task].models[0]
    if routed is not None and routed.task == sub.task:
        model = routed.model
    return Route(task=sub.task, model=model, confidence=routed.confidence if routed else 1.0,
                 reason=f"subtask {i + 1}/{n}")


__all__ = ["AUTO", "CLOUD", "FORCED", "JSON_TASK", "PIPELINE_PREFIX", "TOOLS_TASK", "Entry", "Subtask", "compound",
           "entry", "order", "pipeline_entry", "pipeline_prompt", "strategy_of", "subtask_prompt", "subtask_route"]
