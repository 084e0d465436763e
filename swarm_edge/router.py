"""Routing: which task a prompt is and which model serves it.

Today: a keyword rule over the routes in models.yaml (word-boundary matches, counted per task). The
semantic router (minilm embeddings against route examples) replaces the scoring, not the Route shape.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from swarm_edge.registry import Registry


@dataclass(frozen=True)
class Route:
    """A routing decision: DESIGN.md section 5's Route JSON."""

    task: str
    model: str
    target: str = "local"
    confidence: float = 0.0
    reason: str = ""
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The Route JSON."""
        return asdict(self)


def _pattern(keyword: str) -> re.Pattern[str]:
    kw = re.escape(keyword.strip().lower())
    # word boundaries only where the keyword starts/ends with a word character ("tl;dr" has none at its end)
    left = r"\b" if re.match(r"\w", keyword.strip()) else ""
    right = r"\b" if re.search(r"\w$", keyword.strip()) else ""
    return re.compile(left + kw + right)


class KeywordRouter:
    """Scores each task by how many of its keywords occur in the prompt; ties go to declaration order."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._patterns = {task: [(kw, _pattern(kw)) for kw in route.keywords if kw.strip()]
                          for task, route in registry.routes.items()}

    def route(self, prompt: str) -> Route:
        """Pick a task and its first-choice model for `prompt`."""
        text = prompt.lower()
        hits = {task: [kw for kw, pat in pats if pat.search(text)] for task, pats in self._patterns.items()}
        scores = {task: float(len(h)) for task, h in hits.items()}
        total = sum(scores.values())
        if total == 0:
            task = self.registry.default_task
            return Route(task=task, model=self._model_for(task), confidence=0.0,
                         reason=f"no task keyword matched; default task {task!r}",
                         scores={t: 0.0 for t in scores})
        task = max(scores, key=lambda t: scores[t])  # first maximum in declaration order
        norm = {t: round(s / total, 3) for t, s in scores.items()}
        return Route(task=task, model=self._model_for(task), confidence=norm[task],
                     reason=f"keywords for {task!r}: {', '.join(hits[task])}", scores=norm)

    def _model_for(self, task: str) -> str:
        route = self.registry.routes.get(task)
        if route:
            return route.models[0]
        chat_models = [m.id for m in self.registry if m.kind == "chat"]
        if not chat_models:
            from swarm_edge.errors import ConfigError

            raise ConfigError(f"{self.registry.path}: no route for task {task!r} and no chat model to fall back on")
        return chat_models[0]
