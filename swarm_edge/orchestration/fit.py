"""A routed request on a box too small for its route's model: the best model for the task that does fit, said in
the route's reason, instead of a refusal. A board with 1-2 GiB cannot hold the heavy tier at all; its requests
should get the answer the swarm can give there, not a 507 (an explicit model id still gets the 507: the caller
chose it).

Candidates, in order: the route's own models (models.yaml), then the models that list the task in their `tasks`
(registry order), then, for a shape route (tools, json), every chat model, then router.unsure_model, then any
chat model at all (an answer from a model that fits beats a refusal). The first that fits wins. Whether a model
fits is the runtime's call (`too_big`: its estimate beside what swarm-edge itself and pinned models hold, against
the budget). When nothing fits the route is left as it is, and admission refuses it with both numbers. Pure over
the runtime; blocking (too_big reads memory maps): call it in a thread.
"""

from __future__ import annotations

import dataclasses

from swarm_edge.orchestration.runtime import Runtime
from swarm_edge.registry import SHAPE_TASKS, Registry
from swarm_edge.router import Route


def candidates(registry: Registry, task: str) -> list[str]:
    """The models that may answer `task`, in the order they are tried when the route's model does not fit."""
    out: list[str] = []
    spec_route = registry.routes.get(task)
    if spec_route is not None:
        out += spec_route.models
    out += [m.id for m in registry if task in m.tasks and m.kind == "chat"]
    if task in SHAPE_TASKS:
        out += [m.id for m in registry if m.kind == "chat"]
    if registry.router.unsure_model:
        out.append(registry.router.unsure_model)
    out += [m.id for m in registry if m.kind == "chat"]  # the last resort: an answer rather than a refusal
    return list(dict.fromkeys(out))


def fitted(rt: Runtime, route: Route) -> Route:
    """`route`, or the same route to the first candidate that fits when its model cannot (reason says so)."""
    if route.target != "local":
        return route
    why = rt.too_big(route.model)
    if why is None:
        return route
    for model in candidates(rt.registry, route.task):
        if model != route.model and rt.too_big(model) is None:
            return dataclasses.replace(route, model=model, reason=f"{route.reason}; {why}: {model} instead")
    return route


def planned(rt: Runtime, task: str) -> str:
    """The model a later step of a plan will most likely use for `task`: its route's first model, or the first
    candidate that fits when that one cannot (what `fitted` will pick), for the scheduler's hints."""
    models = candidates(rt.registry, task)
    return next((m for m in models if rt.too_big(m) is None), models[0] if models else task)


def fitting(rt: Runtime, models: list[str]) -> list[str]:
    """A cascade's or ensemble's models without the later ones that cannot fit (the first is the route's,
    already fitted)."""
    return models[:1] + [m for m in models[1:] if rt.too_big(m) is None]
