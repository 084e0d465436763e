"""Routing: which task a prompt is and which model serves it.

Two stages, both driven by models.yaml:
- rules: each task's keywords, matched (word boundaries) in the prompt's instruction head, give a keyword
  share per task. Alone they are the fallback when no embedding model is configured or available.
- a trained head (route_head.py): multinomial logistic regression over the prompt's features - the router's
  embedding model (minilm-l6) pooled over the instruction head and over the whole prompt (one forward pass),
  the keyword shares, and hashed first words - fit on every route's examples and router.examples_file, with
  a softmax temperature fitted on held-out examples, so that confidence means what it says. Trained once
  per set of examples (cached by their hash with the embedding model).
An unsure route (confidence < min_confidence) goes to router.unsure_model, a generalist, when one is named.

Where the embedding model runs, its loading, unloading and fallback to the rules: router_host.py.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from swarm_edge.errors import ConfigError, InferenceError, SwarmEdgeError
from swarm_edge.registry import Registry, examples_path

log = logging.getLogger("swarm_edge.router")


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

    @classmethod
    def from_dict(cls, d: dict) -> Route:
        """From the Route JSON (a daemon's answer); missing fields take their defaults."""
        return cls(task=d.get("task") or "", model=d.get("model") or "", target=d.get("target") or "local",
                   confidence=d.get("confidence") or 0.0, reason=d.get("reason") or "", scores=d.get("scores") or {})


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

    def shares(self, text: str) -> dict[str, float]:
        """Each task's share of the keyword hits in `text` (all zero when nothing matches)."""
        text = text.lower()
        hits = {task: sum(1 for _, pat in pats if pat.search(text)) for task, pats in self._patterns.items()}
        total = sum(hits.values())
        return {t: (h / total if total else 0.0) for t, h in hits.items()}

    def named_tasks(self, text: str) -> list[str]:
        """The tasks whose keywords occur in `text`, in the order they are first named."""
        text = text.lower()
        first = {}
        for task, pats in self._patterns.items():
            starts = [m.start() for _, pat in pats if (m := pat.search(text))]
            if starts:
                first[task] = min(starts)
        return sorted(first, key=lambda task: first[task])

    def route(self, prompt: str) -> Route:
        """Pick a task and its first-choice model for `prompt`."""
        text = prompt.lower()
        hits = {task: [kw for kw, pat in pats if pat.search(text)] for task, pats in self._patterns.items()}
        scores = {task: float(len(h)) for task, h in hits.items()}
        total = sum(scores.values())
        if total == 0:
            task = self.registry.default_task
            return Route(task=task, model=self.model_for(task), confidence=0.0,
                         reason=f"no task keyword matched; default task {task!r}",
                         scores={t: 0.0 for t in scores})
        task = max(scores, key=lambda t: scores[t])  # first maximum in declaration order
        norm = {t: round(s / total, 3) for t, s in scores.items()}
        return Route(task=task, model=self.model_for(task), confidence=norm[task],
                     reason=f"keywords for {task!r}: {', '.join(hits[task])}", scores=norm)

    def model_for(self, task: str) -> str:
        route = self.registry.routes.get(task)
        if route:
            return route.models[0]
        chat_models = [m.id for m in self.registry if m.kind == "chat"]
        if not chat_models:
            raise ConfigError(f"{self.registry.path}: no route for task {task!r} and no chat model to fall back on")
        return chat_models[0]


# ---------------------------------------------------------------- semantic routing

_HEAD = re.compile(r"^(.{8,160}?)[:\n]", re.S)
METHOD = "head-lr-v1"  # part of the head's cache key: change it when the features or the fit change


def instruction_head(text: str) -> str:
    """The instruction part of a prompt: the text before the first colon or newline, when there is one.

    "Summarize this: <three paragraphs about interest rates>" is a summarize request, but its embedding is
    dominated by the pasted content; the head is what says what to do with it.
    """
    m = _HEAD.match(text.strip())
    return m.group(1) if m else text.strip()


def router_examples(registry: Registry) -> list[tuple[str, str]]:
    """(prompt, task) pairs the head learns from: each route's `examples`, then router.examples_file."""
    import json

    pairs = [(e, task) for task, r in registry.routes.items() for e in r.examples]
    name = registry.router.examples_file
    if name:
        path = examples_path(registry.base_dir, name)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{registry.path}: router examples_file {path}: cannot read ({exc})") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                prompt, task = item["prompt"], item["task"]
            except (ValueError, KeyError, TypeError):
                raise ConfigError(f"{path}:{n}: a router example is {{\"prompt\": ..., \"task\": ...}}") from None
            if task not in registry.content_tasks or not isinstance(prompt, str) or not prompt.strip():
                raise ConfigError(f"{path}:{n}: task {task!r} has no route a request's words go to "
                                  "(or the prompt is empty)")
            pairs.append((prompt, task))
    return pairs


class RouterStopped(SwarmEdgeError):
    """The head's training was stopped (the engine is closing): nothing is cached, the rules route meanwhile."""


@dataclass
class HeadRef:
    """A trained head the daemon's router worker loaded from the cache file (the daemon itself never holds it,
    nor imports numpy for it): what the next worker is told to load after a sleep."""

    path: str
    temperature: float | None = None  # models.yaml's override, else the file's
    data: bytes = b""                 # the file as it loaded: put back if it is gone when a new worker needs it

    def wire(self) -> dict:
        if self.data:
            _restore(self.path, self.data)
        return {"path": self.path, "temperature": self.temperature}


def _restore(path: str, data: bytes) -> None:
    """Write the head's cache file back if it was removed (a cache cleanup while the daemon slept), so a reload
    never trains again; a failure leaves it to the worker's load to fail (then it is trained)."""
    from pathlib import Path

    target = Path(path)
    if target.exists():
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    except OSError:
        pass


class SemanticRouter:
    """A trained head over the prompt's features, calibrated into per-task probabilities (module docstring).

    `backend` is an in-process ONNXBackend (it needs `embed_with_prefix`), or the daemon's RemoteEmbedder
    (router_host.py), whose worker also keeps the head and answers a prompt's probabilities (`scores`): then the
    daemon imports numpy only to train a head (the first start with new examples), ~10 MiB of PSS it would keep.
    Thread-safe after construction: onnxruntime sessions may be run from several threads.
    """

    _remote = False  # the head lives in the backend's worker

    def __init__(self, registry: Registry, backend, *, embedder_sha: str = "", cache_dir=None, head=None,
                 stop: Callable[[], bool] | None = None) -> None:
        self._np: Any = None
        self._remote = hasattr(backend, "scores")
        self.registry = registry
        self.spec = registry.router
        self.backend = backend
        self.keywords = KeywordRouter(registry)
        self.examples = router_examples(registry)
        self.tasks = [t for t in registry.routes if any(task == t for _, task in self.examples)]
        if len(self.tasks) < 2:
            raise ConfigError(f"{registry.path}: semantic routing needs examples of at least two tasks")
        self.embedder_sha, self.cache_dir = embedder_sha, cache_dir
        self._stop = stop  # asked before each example while the head trains: the engine closing ends the training
        if head is not None and self._remote:
            try:
                backend.load_head(head.wire())
            except InferenceError as exc:  # its cache file gone meanwhile: load or train it as on a first start
                log.warning("the router's worker could not load its head (%s)", exc)
                head = None
        self.head = head if head is not None else self._head()

    def _numpy(self):
        if self._np is None:
            import numpy as np

            self._np = np
        return self._np

    def examples_key(self) -> str:
        """Hash of the embedding model, the method, the feature scale and every example: the head's cache key."""
        import hashlib
        import json

        blob = json.dumps({"embedder": self.embedder_sha, "method": METHOD, "tasks": self.tasks,
                           "keyword_weight": self.spec.keyword_weight, "examples": self.examples,
                           "keywords": {t: self.registry.routes[t].keywords for t in self.tasks}}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def features(self, text: str, head: str | None = None, shares: dict[str, float] | None = None):
        """The head's input: the instruction head's and the whole prompt's embeddings, the keyword shares and the
        hashed first words."""
        from swarm_edge import route_head

        text = text.strip() or " "
        head = head if head is not None else instruction_head(text)
        h, w = self.backend.embed_with_prefix(text, len(head))
        shares = shares if shares is not None else self.keywords.shares(head)
        return route_head.features(h, w, [shares.get(t, 0.0) for t in self.tasks], self.spec.keyword_weight, text)

    def _scores(self, text: str, head: str, shares: dict[str, float]) -> list[float]:
        """The calibrated task probabilities (self.tasks order), from the worker that keeps the head or here."""
        if self._remote:
            return self.backend.scores(text.strip() or " ", len(head), [shares.get(t, 0.0) for t in self.tasks],
                                       self.spec.keyword_weight)
        return [float(p) for p in self.head.probs(self.features(text, head, shares))]

    def _head(self):
        """The trained head, from the cache when the examples are unchanged (training embeds every example)."""
        from pathlib import Path

        cache = Path(self.cache_dir) / f"router-{self.examples_key()}.npz" if self.cache_dir else None
        if self._remote and cache is not None and cache.exists():
            try:
                ref = HeadRef(str(cache), self.spec.temperature, cache.read_bytes())
                self.backend.load_head(ref.wire())
                return ref
            except OSError as exc:  # unreadable: train it again (here)
                log.warning("the router's cached head could not be read (%s); training it again", exc)
            except InferenceError as exc:  # empty, corrupt: train it again (here)
                log.warning("the router's cached head did not load (%s); training it again", exc)
        from swarm_edge import route_head  # numpy: in the daemon, only to train

        np = self._numpy()
        head = None
        if cache is not None and not self._remote:
            try:
                with np.load(cache) as data:
                    head = route_head.Head(data["W"], data["b"], float(data["temperature"]))
            except Exception:  # noqa: BLE001 - missing, empty (EOFError), corrupt (BadZipFile): train it again
                head = None
        if head is None:
            log.info("training the router's head on %d examples (once per set of examples)", len(self.examples))
            X = np.stack([self._example(text) for text, _ in self.examples])
            y = np.array([self.tasks.index(task) for _, task in self.examples])
            head = route_head.train(X, y, len(self.tasks), [text for text, _ in self.examples])
            self._save(cache, head)
        if self.spec.temperature is not None:  # models.yaml's override; the cache keeps the fitted one
            head.temperature = float(self.spec.temperature)
        if self._remote:
            self.backend.load_head(head.wire())
        return head

    def _example(self, text: str):
        if self._stop is not None and self._stop():
            raise RouterStopped("the router's head was still training when the engine closed")
        return self.features(text)

    def _save(self, cache, head) -> None:
        np = self._numpy()
        if cache is not None:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_name(f"{cache.name}.{os.getpid()}.{threading.get_ident()}.tmp.npz")
                np.savez(tmp, W=head.W, b=head.b, temperature=np.float64(head.temperature))
                tmp.replace(cache)
            except OSError:
                pass  # a read-only home only costs the next start the training again

    def probabilities(self, text: str):
        """Calibrated per-task probabilities (in self.tasks order) for `text`."""
        if self._remote:
            head = instruction_head(text)
            return self._scores(text, head, self.keywords.shares(head))
        return self.head.probs(self.features(text))

    def route(self, text: str, resident: frozenset[str] | set[str] = frozenset()) -> Route:
        """The calibrated task probabilities for `text`, the winning task and the model to run it.

        `resident`: models loaded right now. When the winner's first-choice model is not resident and a
        resident model that the winning route also lists is the first choice of a task within
        `prefer_resident_within` of the winner, that model answers instead (no swap for a coin flip).
        An unsure route (confidence < min_confidence) goes to router.unsure_model when one is named.
        """
        head = instruction_head(text)
        shares = self.keywords.shares(head)
        p = self._scores(text, head, shares)
        order = sorted(range(len(p)), key=lambda i: -p[i])
        best = self.tasks[order[0]]
        conf = float(p[order[0]])
        model = self.keywords.model_for(best)
        why = [f"the trained head says {best!r}"]
        hits = [t for t in self.tasks if shares.get(t)]
        if hits:
            why.append("keywords for " + ", ".join(hits))
        if resident and model not in resident:
            serving = self.registry.routes[best].models
            for i in order[1:]:
                if conf - float(p[i]) > self.spec.prefer_resident_within:
                    break
                alt = self.keywords.model_for(self.tasks[i])
                if alt in resident and alt in serving:
                    why.append(f"{alt} is resident and serves {best!r} ({self.tasks[i]!r} is within "
                               f"{conf - float(p[i]):.2f}); no swap")
                    model = alt
                    break
        if conf < self.spec.min_confidence:
            runner = self.tasks[order[1]] if len(order) > 1 else None
            why.append(f"unsure: confidence {conf:.2f} < {self.spec.min_confidence}"
                       + (f", runner-up {runner!r} {float(p[order[1]]):.2f}" if runner else ""))
            if self.spec.unsure_model and self.spec.unsure_model != model:
                model = self.spec.unsure_model
                why.append(f"answered by the generalist {model}")
        return Route(task=best, model=model, confidence=round(conf, 4), reason="; ".join(why),
                     scores={t: round(float(p[i]), 4) for i, t in enumerate(self.tasks)})
