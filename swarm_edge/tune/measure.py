"""Measuring for `swarm-edge tune`: every model and variant of a task's route answers every example (as that task,
routing bypassed, greedy, each prompt evaluated afresh), with the mean token log-prob recorded; answers are cached
per (model file, variant, prompt, settings)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm_edge import checks, selfcheck
from swarm_edge.orchestration.request import echoes, material
from swarm_edge.tune.examples import example_id, split_of

METHOD = "tune-v1"                    # part of the cache key: change it when what is measured changes


@dataclass(frozen=True)
class Variant:
    """How a task's route asks a model: with or without its system prompt, with or without its tool."""

    system: str = ""
    tool: str | None = None

    @property
    def name(self) -> str:
        return self.tool or ("system" if self.system else "plain")


def variants(route) -> list[Variant]:
    out = [Variant()]
    if route.system:
        out.append(Variant(system=route.system))
    if route.tool:
        out.append(Variant(tool=route.tool))
    return out


class Cache:
    """Measured answers, one JSON line each, keyed by what determines them."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, dict] = {}
        if path is not None and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.data[rec["key"]] = rec
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a kill: measured again

    def get(self, key: str) -> dict | None:
        return self.data.get(key)

    def put(self, rec: dict) -> None:
        self.data[rec["key"]] = rec
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _key(model_sha: str, task: str, variant: Variant, prompt: str, max_tokens: int | None, threads: int) -> str:
    blob = json.dumps([METHOD, model_sha, task, variant.system, variant.tool, prompt, max_tokens, threads])
    return hashlib.sha256(blob.encode()).hexdigest()


def fingerprint(spec, variant: Variant) -> str:
    """What else decides an answer: the model's own settings, and the calculator's prompt when it is used. A
    cached answer measured under another fingerprint is measured again."""
    from swarm_edge import orchestrator

    calc = [orchestrator.CALC_SYSTEM, orchestrator.CALC_EXAMPLES] if variant.tool == "calculator" else None
    blob = json.dumps([spec.kind, spec.max_tokens, spec.n_ctx, spec.n_batch, calc], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _Tuning:
    """The engine as one measurement sees it: the same models and workers, a registry whose route for the task
    under measurement is the variant's (the engine's own registry, which other requests read, is not touched)."""

    def __init__(self, engine: Any, registry: Any) -> None:
        self._engine, self.registry = engine, registry

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


async def measure(engine, examples: list[dict], models: list[str], *, cache: Cache, max_tokens: int | None = None,
                  on_record: Callable[[dict], None] | None = None) -> list[dict]:
    """Answer every example with every model and variant of its task's route (see the package docstring)."""
    registry = engine.registry
    records = []
    for task in sorted({ex["task"] for ex in examples}, key=list(registry.routes).index):
        route = registry.routes[task]
        for model in models:
            spec = registry.get(model)
            for var in variants(route):
                if var.system and spec.kind == "completion":
                    continue  # a completion model drops system prompts: the same request as plain
                tuned = _Tuning(engine, registry.with_route(task, route.model_copy(update={
                    "models": [model], "strategy": "single", "system": var.system, "tool": var.tool})))
                for ex in (e for e in examples if e["task"] == task):
                    rec = await _measured(tuned, ex, task, model, var, cache, max_tokens)
                    records.append(rec)
                    if on_record:
                        on_record(rec)
    return records


async def _measured(tuned: _Tuning, ex: dict, task: str, model: str, var: Variant, cache: Cache,
                    max_tokens: int | None) -> dict:
    """One example's record: from the cache when measured under the same fingerprint, else answered now."""
    spec = tuned.registry.get(model)
    key = _key(spec.file("model").sha256, task, var, ex["prompt"], max_tokens, tuned.settings.threads)
    fp = fingerprint(spec, var)
    rec = cache.get(key)
    if rec is None or rec.get("spec") != fp:
        rec = await _answer(tuned, ex, task, max_tokens)
        rec.update(key=key, model=model, variant=var.name, spec=fp)
        if rec["error"] is None:  # a failure (model not fetched, worker killed) is retried
            cache.put(rec)
    rec = {**rec, "id": example_id(ex), "task": task, "split": split_of(ex), "model": model, "variant": var.name}
    rec["ok"], rec["note"] = checks.check(ex, rec["text"])  # the check may improve: re-run
    # what a cascade's self-checks say of this answer (selfcheck.py; recomputed, not cached)
    rec["flags"] = selfcheck.problems(task, ex["prompt"], material(ex["prompt"]), rec["text"])
    return rec


async def _answer(engine, ex: dict, task: str, max_tokens: int | None) -> dict:
    from swarm_edge import orchestrator

    messages = [{"role": "user", "content": ex["prompt"]}]
    t0 = time.perf_counter()
    try:
        answer = await orchestrator.ask_async(ex["prompt"], engine, task=task, logprobs=True, cache_prompt=False,
                                              decompose=False, allow_cloud=False, max_tokens=max_tokens)
    except Exception as exc:  # noqa: BLE001 - a failed answer is a wrong one; the record says why
        return {"text": "", "error": f"{type(exc).__name__}: {exc}", "latency_s": time.perf_counter() - t0,
                "sure": None, "echo": False, "tokens": 0, "wrote_expression": None}
    latency = time.perf_counter() - t0 - ((answer.timings or {}).get("load_s") or 0.0)  # loads are not the task's
    last = answer.steps[-1] if answer.steps else {}
    decisive = answer.steps[0] if answer.steps else {}
    return {"text": answer.text, "error": None, "latency_s": round(latency, 4),
            "sure": decisive.get("mean_logprob"), "echo": echoes(answer.text, messages),
            "tokens": sum(s.get("tokens", 0) for s in answer.steps),
            "wrote_expression": decisive.get("expression") is not None if "expression" in decisive else None,
            "final_sure": last.get("mean_logprob")}


def run_measure(engine, examples, models, **kw) -> list[dict]:
    """measure() from synchronous code."""
    async def main():
        await engine.start()
        try:
            return await measure(engine, examples, models, **kw)
        finally:
            await engine.close()
    return asyncio.run(main())
