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


# ---------------------------------------------------------------- semantic routing (WIP, issue 5)

_HEAD = re.compile(r"^(.{8,160}?)[:\n]", re.S)


def instruction_head(text: str) -> str:
    """The instruction part of a prompt: the text before the first colon or newline, when there is one.

    "Summarize this: <three paragraphs about interest rates>" is a summarize request, but its embedding is
    dominated by the pasted content; the head is what says what to do with it.
    """
    m = _HEAD.match(text.strip())
    return m.group(1) if m else text


class SemanticRouter:
    """Keyword share + minilm similarity of the prompt (its instruction head, and all of it) to each task's
    example centroid. The centroids are computed once per set of examples and cached by their hash."""

    HEAD_W, WHOLE_W, KEYWORD_W = 0.7, 0.3, 0.1   # tuned on tests/data/route_dev.jsonl (WIP: needs a held-out split)

    def __init__(self, registry: Registry, *, embedder_sha: str = "", cache_dir=None) -> None:
        self.registry = registry
        self.keywords = KeywordRouter(registry)
        self.tasks = [t for t, r in registry.routes.items() if r.examples]
        self.embedder_sha, self.cache_dir = embedder_sha, cache_dir
        self.centroids: list[list[float]] | None = None

    def examples_key(self) -> str:
        """Hash of the embedding model and every task's examples: the cache key of the centroids."""
        import hashlib
        import json

        blob = json.dumps({"embedder": self.embedder_sha,
                           "examples": {t: self.registry.routes[t].examples for t in self.tasks}}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    async def prepare(self, embed) -> None:
        """Load the cached centroids, or embed the examples (`await embed(texts)`) and cache them."""
        import json
        from pathlib import Path

        cache = Path(self.cache_dir) / f"router-{self.examples_key()}.json" if self.cache_dir else None
        if cache is not None and cache.exists():
            data = json.loads(cache.read_text())
            if data.get("tasks") == self.tasks:
                self.centroids = data["centroids"]
                return
        centroids = []
        for task in self.tasks:
            vecs = await embed(self.registry.routes[task].examples)
            mean = [sum(col) / len(vecs) for col in zip(*vecs, strict=True)]
            norm = sum(x * x for x in mean) ** 0.5 or 1.0
            centroids.append([x / norm for x in mean])
        self.centroids = centroids
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps({"tasks": self.tasks, "centroids": centroids}))
            tmp.replace(cache)

    async def route(self, text: str, embed) -> Route:
        """Scores for every task, the best task and its first-choice model."""
        if self.centroids is None:
            await self.prepare(embed)
        head_vec, whole_vec = await embed([instruction_head(text), text])
        kw = self.keywords.route(text)
        scores = {}
        for task, c in zip(self.tasks, self.centroids, strict=True):
            sim_head = sum(a * b for a, b in zip(head_vec, c, strict=True))
            sim_whole = sum(a * b for a, b in zip(whole_vec, c, strict=True))
            scores[task] = (self.HEAD_W * sim_head + self.WHOLE_W * sim_whole
                            + self.KEYWORD_W * kw.scores.get(task, 0.0))
        ranked = sorted(scores, key=scores.get, reverse=True)
        best = ranked[0]
        margin = scores[best] - (scores[ranked[1]] if len(ranked) > 1 else 0.0)
        return Route(task=best, model=self.keywords._model_for(best), confidence=round(min(1.0, margin * 10), 3),
                     reason=f"closest to the {best!r} examples (margin {margin:.3f})"
                     + (f"; keywords: {kw.reason}" if kw.confidence else ""),
                     scores={t: round(s, 4) for t, s in scores.items()})
