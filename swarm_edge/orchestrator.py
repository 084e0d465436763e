"""Plans and runs requests. Today one plan, `single`: route, make sure the files are there, load, answer.

Every answer carries a trace: the route and why, which model ran, and fetch/load/first-token/generate
times. Later issues add the pager (leases instead of load-per-call), pipelines, cascades and the cloud.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from swarm_edge.config import Settings
from swarm_edge.registry import Registry
from swarm_edge.router import KeywordRouter, Route
from swarm_edge.sources import ensure_model
from swarm_edge.workers import GenerateRequest, open_backend


@dataclass
class Answer:
    """The text of an answer plus its trace."""

    text: str
    model: str
    route: Route
    finish_reason: str
    timings: dict[str, float | None] = field(default_factory=dict)
    tokens: int = 0
    left_device: bool = False

    def to_dict(self) -> dict:
        """JSON-ready form (what `ask --json` prints)."""
        d = asdict(self)
        d["route"] = self.route.to_dict()
        return d


def ask(prompt: str, registry: Registry, settings: Settings, *, model_id: str | None = None,
        max_tokens: int | None = None, temperature: float = 0.0, system: str | None = None,
        on_token: Callable[[str], None] | None = None, progress_factory=None) -> Answer:
    """Answer one prompt in this process with the routed (or the given) model."""
    t0 = time.perf_counter()
    if model_id is not None:
        spec = registry.get(model_id)
        route = Route(task="explicit", model=spec.id, confidence=1.0, reason="model chosen by the caller")
    else:
        route = KeywordRouter(registry).route(prompt)
        spec = registry.get(route.model)
    if spec.kind == "embedding":
        from swarm_edge.errors import InferenceError

        raise InferenceError(f"{spec.id} is an embedding model; pick a model that generates text")
    files = ensure_model(settings, spec, registry.base_dir, fetch=not settings.offline,
                         progress_factory=progress_factory)
    t_files = time.perf_counter()
    backend = open_backend(spec, files, settings.threads)
    try:
        t_loaded = time.perf_counter()
        if spec.kind == "chat":
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}]
            request = GenerateRequest(messages=messages, max_tokens=max_tokens or spec.max_tokens,
                                      temperature=temperature)
        else:
            request = GenerateRequest(prompt=prompt, max_tokens=max_tokens or spec.max_tokens,
                                      temperature=temperature)
        parts: list[str] = []
        done: dict = {}
        for event in backend.generate(request):
            if event["type"] == "token":
                parts.append(event["text"])
                if on_token:
                    on_token(event["text"])
            else:
                done = event
    finally:
        backend.close()
    t_end = time.perf_counter()
    return Answer(
        text="".join(parts).strip(), model=spec.id, route=route, finish_reason=done.get("finish_reason", "stop"),
        tokens=done.get("chunks", 0),
        timings={"files_s": round(t_files - t0, 4), "load_s": round(t_loaded - t_files, 4),
                 "ttft_s": _r(done.get("ttft_s")), "decode_tok_s": _r(done.get("decode_tok_s")),
                 "generate_s": round(t_end - t_loaded, 4), "total_s": round(t_end - t0, 4)},
    )


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)
