"""swarm-edge tune: measure every model on every task of labelled examples, then write the route table by rule.

Examples are JSONL, one request per line: {"prompt", "task", "check", ...the check's fields (checks.py)},
optionally "id". They are split into dev and test by a fixed hash of the id (of the prompt when there is none)
*before* anything is measured; decisions read dev only, test is reported beside it.

Measuring: for each task, each generation model and each variant of the task's route (no system prompt; the
route's system prompt; the calculator tool where the route has one), every example is answered as that task
(routing bypassed), greedy, each prompt evaluated afresh, with the mean token log-prob recorded. Results are
cached per (model file, variant, prompt, settings), so a re-run with another rule costs nothing.

The rule, per task (decide()), on dev only; latency excludes model loads:
1. Options are asked one way each (a variant: plain, the route's system prompt, its tool), as models.yaml
   can only say it per route.
2. A model right on no more dev examples than another asked the same way that is as fast or faster is
   dominated: it gets no option (so no route) for the task.
3. Options: each remaining model alone, and each cascade faster -> slower model with the threshold on the
   first model's mean token log-prob (an answer that repeats its input, that a self-check flags
   (selfcheck.py), or a calculator try with no expression, is never kept) that maximises dev accuracy, the
   lower mean latency breaking ties. (A calculator cascade is approximated: the first model's measured
   answer, its plain fallback included, then the second model's.)
4. The route is the fastest option whose dev accuracy is within `epsilon` examples of the best option's;
   ties go to the plain request (a system prompt or tool stays only where it measurably helps), then to
   fewer models.

Then across tasks (consolidate()): every model a route names stays resident once used, and peak memory is
the sum of the resident models. A model that only some routes name is dropped when each of those tasks has
an option (rule 3's, or a model alone that rule 2 ruled out for being slower) within `epsilon` of that task's
best that uses only models the other routes keep; the task then takes the fastest such option. Models are
tried largest file first; a dropped model costs those tasks some latency and, within epsilon, no accuracy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from swarm_edge import checks, selfcheck
from swarm_edge.errors import ConfigError
from swarm_edge.orchestration.judge import keeps
from swarm_edge.orchestration.request import echoes, material

SALT = "swarm-edge/eval-split/v1:"   # the same split as benchmarks/evalsets.py
METHOD = "tune-v1"                    # part of the cache key: change it when what is measured changes
CHECK_FIELDS = {"number": ("answer",), "contains": ("expect",), "summary": ("expect",),
                "label": ("answer", "options"), "python": ("test",)}


# ---------------------------------------------------------------- examples


def example_id(ex: dict) -> str:
    return str(ex.get("id") or "p-" + hashlib.sha256(ex["prompt"].encode()).hexdigest()[:16])


def split_of(ex: dict) -> str:
    """"dev" or "test": a fixed hash of the example's id, decided before anything is measured."""
    return "test" if hashlib.sha256((SALT + example_id(ex)).encode()).digest()[0] % 2 else "dev"


def _check_fields(ex: dict, kind: str) -> str | None:
    """What is wrong with a check's fields, or None."""
    def strings(v) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, str) and x.strip() for x in v)

    if kind == "number":
        try:
            float(ex["answer"])
        except (TypeError, ValueError):
            return f"a number check's answer must be a number, got {ex['answer']!r}"
    elif kind in ("contains", "summary"):
        if not (isinstance(ex["expect"], list) and ex["expect"] and all(strings(g) for g in ex["expect"])):
            return 'expect is a list of groups of alternatives: [["paris"], ["1889", "eighteen eighty-nine"]]'
        if kind == "summary" and ":" not in ex["prompt"]:
            return "a summary check needs the text to summarise after a colon in the prompt"
    elif kind == "label":
        if not strings(ex["options"]) or ex["answer"] not in ex["options"]:
            return "options is a list of labels and answer is one of them"
    elif kind == "python" and not (isinstance(ex["test"], str) and ex["test"].strip()):
        return "a python check's test is Python source (asserts)"
    return None


def load_examples(path: Path, tasks: list[str]) -> list[dict]:
    """Labelled examples from a JSONL file; ConfigError naming the line for anything unusable."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the examples ({exc})") from None
    out, seen = [], set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            ex = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"{where}: not JSON ({exc})") from None
        if not isinstance(ex, dict) or not isinstance(ex.get("prompt"), str) or not ex["prompt"].strip():
            raise ConfigError(f"{where}: an example is an object with a non-empty \"prompt\"")
        if ex.get("task") not in tasks:
            raise ConfigError(f"{where}: \"task\" must be one of the routes' tasks: {', '.join(tasks)}")
        kind = ex.get("check")
        if not isinstance(kind, str) or kind not in CHECK_FIELDS:
            raise ConfigError(f"{where}: \"check\" must be one of {', '.join(CHECK_FIELDS)}")
        missing = [f for f in CHECK_FIELDS[kind] if f not in ex]
        if missing:
            raise ConfigError(f"{where}: a {kind} check needs {', '.join(missing)}")
        problem = _check_fields(ex, kind)
        if problem:
            raise ConfigError(f"{where}: {problem}")
        eid = example_id(ex)
        if eid in seen:
            raise ConfigError(f"{where}: duplicate id {eid!r}")
        seen.add(eid)
        out.append(ex)
    if not out:
        raise ConfigError(f"{path}: no examples")
    return out


# ---------------------------------------------------------------- measuring


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


async def measure(engine, examples: list[dict], models: list[str], *, cache: Cache, max_tokens: int | None = None,
                  on_record: Callable[[dict], None] | None = None) -> list[dict]:
    """Answer every example with every model and variant of its task's route (see the module docstring)."""
    from swarm_edge import orchestrator

    registry = engine.registry
    original = dict(registry.routes)
    records = []
    try:
        for task in sorted({ex["task"] for ex in examples}, key=list(registry.routes).index):
            route = original[task]
            for model in models:
                sha = registry.get(model).file("model").sha256
                for var in variants(route):
                    if var.system and registry.get(model).kind == "completion":
                        continue  # a completion model drops system prompts: the same request as plain

                    registry.routes[task] = route.model_copy(update={"models": [model], "strategy": "single",
                                                                     "system": var.system, "tool": var.tool})
                    for ex in (e for e in examples if e["task"] == task):
                        key = _key(sha, task, var, ex["prompt"], max_tokens, engine.settings.threads)
                        fp = fingerprint(registry.get(model), var)
                        rec = cache.get(key)
                        if rec is None or rec.get("spec") != fp:
                            rec = await _answer(orchestrator, engine, ex, task, max_tokens)
                            rec.update(key=key, model=model, variant=var.name, spec=fp)
                            if rec["error"] is None:  # a failure (model not fetched, worker killed) is retried
                                cache.put(rec)
                        rec = {**rec, "id": example_id(ex), "task": task, "split": split_of(ex), "model": model,
                               "variant": var.name}
                        rec["ok"], rec["note"] = checks.check(ex, rec["text"])  # the check may improve: re-run
                        # what a cascade's self-checks say of this answer (selfcheck.py; recomputed, not cached)
                        rec["flags"] = selfcheck.problems(task, ex["prompt"], material(ex["prompt"]),
                                                          rec["text"])
                        records.append(rec)
                        if on_record:
                            on_record(rec)
    finally:
        registry.routes.clear()
        registry.routes.update(original)
    return records


async def _answer(orchestrator, engine, ex: dict, task: str, max_tokens: int | None) -> dict:
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


# ---------------------------------------------------------------- deciding


@dataclass
class Option:
    """One way to serve a task: a model alone, or a cascade cheap -> final, asked one way (variant)."""

    models: list[str]
    variant: str
    strategy: str = "single"
    min_logprob: float | None = None
    correct: int = 0
    n: int = 0
    latency_s: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def label(self) -> str:
        how = f"cascade at mean log-prob {self.min_logprob:.3f}" if self.strategy == "cascade" else "alone"
        return f"{' -> '.join(self.models)} ({self.variant}, {how})"


@dataclass
class Decision:
    task: str
    chosen: Option
    options: list[Option] = field(default_factory=list)
    dominated: dict[str, str] = field(default_factory=dict)
    why: str = ""
    alone: list[Option] = field(default_factory=list)  # every model alone, each way, dominated ones too


def _by(records: list[dict], split: str) -> dict[tuple[str, str], dict[str, dict]]:
    """(model, variant) -> {example id: record} for one split."""
    out: dict[tuple[str, str], dict[str, dict]] = {}
    for r in records:
        if r["split"] == split:
            out.setdefault((r["model"], r["variant"]), {})[r["id"]] = r
    return out


def _accepted(r: dict, threshold: float) -> bool:
    """Whether a cascade keeps the cheap model's answer (judge.keeps, which the cascades use)."""
    if r.get("wrote_expression") is False:
        return False
    return keeps(r.get("sure"), threshold, echo=bool(r.get("echo")), flags=r.get("flags") or ())


def simulate(option: Option, table: dict[tuple[str, str], dict[str, dict]], ids: list[str]) -> tuple[int, float]:
    """(correct, mean latency) of an option on the examples `ids`, from the models' measured answers."""
    correct, total = 0, 0.0
    first = table.get((option.models[0], option.variant), {})
    final = table.get((option.models[-1], option.variant), {})
    ids = [i for i in ids if i in first and i in final]  # a split (or model) without answers counts nothing
    for i in ids:
        total += first[i]["latency_s"]
        if option.strategy == "single" or _accepted(first[i], option.min_logprob):
            correct += bool(first[i]["ok"])
        else:
            correct += bool(final[i]["ok"])
            total += final[i]["latency_s"]
    return correct, total / max(1, len(ids))


def _preferred(o: Option) -> tuple:
    """Rule 4's order among options within epsilon: faster, then more right, then plain, then fewer models."""
    return round(o.latency_s, 3), -o.correct, o.variant != "plain", len(o.models)


def decide(records: list[dict], task: str, models: list[str], *, epsilon: int = 1) -> Decision:
    """The route for `task` by the rule in the module docstring, from dev records only."""
    table = _by([r for r in records if r["task"] == task], "dev")
    ids = sorted({i for recs in table.values() for i in recs})
    if not ids:
        raise ConfigError(f"no dev examples for task {task!r}")
    order = ["plain", "system", "calculator"]
    options: list[Option] = []
    dominated: dict[str, str] = {}
    every: list[Option] = []
    for v in sorted({v for _, v in table}, key=lambda v: order.index(v) if v in order else len(order)):
        single = {}
        for m in models:
            if (m, v) in table:
                o = Option([m], v, n=len(ids))
                o.correct, o.latency_s = simulate(o, table, ids)
                single[m] = o
        every += single.values()
        for m, o in single.items():  # rule 2: worse and no faster than another model, asked the same way
            for other, q in single.items():
                if other != m and q.correct >= o.correct and q.latency_s <= o.latency_s and \
                        (q.correct > o.correct or q.latency_s < o.latency_s):  # equal twins both stay
                    dominated[f"{m} ({v})"] = (f"{other} is right on {q.correct}/{len(ids)} at {q.latency_s:.2f} s, "
                                               f"{m} on {o.correct} at {o.latency_s:.2f} s")
                    break
        alive = sorted((m for m in single if f"{m} ({v})" not in dominated), key=lambda m: single[m].latency_s)
        options += [single[m] for m in alive]
        for i, cheap in enumerate(alive):  # rule 3: cascades, a faster model first and a more accurate one after
            for final in alive[i + 1:]:
                sures = sorted({r["sure"] for r in table[(cheap, v)].values() if r.get("sure") is not None})
                best = None
                for t in sures:
                    c = Option([cheap, final], v, "cascade", t, n=len(ids))
                    c.correct, c.latency_s = simulate(c, table, ids)
                    if best is None or (c.correct, -c.latency_s) > (best.correct, -best.latency_s):
                        best = c
                if best is not None:
                    options.append(best)
    top = max(o.correct for o in options)
    # rule 4; ties: the plain request, then fewer models
    chosen = min((o for o in options if o.correct >= top - epsilon), key=_preferred)
    why = (f"the fastest option within {epsilon} dev example(s) of the best ({top}/{len(ids)}): "
           f"{chosen.label()}, {chosen.correct}/{len(ids)} at {chosen.latency_s:.2f} s")
    return Decision(task, chosen, options, dominated, why, every)


def consolidate(decisions: dict[str, Decision], sizes: dict[str, int], *, epsilon: int = 1) -> dict[str, str]:
    """Drop models from the route table where the rule allows it (module docstring); changes `decisions` in
    place and returns {dropped model: why}. `sizes`: each model's file size in bytes (the larger goes first)."""
    dropped: dict[str, str] = {}
    for model in sorted({m for d in decisions.values() for m in d.chosen.models}, key=lambda m: -sizes.get(m, 0)):
        users = [d for d in decisions.values() if model in d.chosen.models]
        kept = {m for d in decisions.values() if model not in d.chosen.models for m in d.chosen.models}
        if not kept:
            continue  # the only model of the table: nothing to share with
        swaps = {}
        for d in users:
            top = max(o.correct for o in d.options)
            fits = [o for o in d.options + d.alone if o.correct >= top - epsilon and set(o.models) <= kept]
            if not fits:
                break
            swaps[d.task] = min(fits, key=_preferred)
        else:
            for d in users:
                was, d.chosen = d.chosen, swaps[d.task]
                d.why = (f"{d.why}; then {model} left the swarm (the other routes keep "
                         f"{', '.join(sorted(kept))} resident), so {d.chosen.label()}, {d.chosen.correct}/"
                         f"{d.chosen.n} at {d.chosen.latency_s:.2f} s (was {was.correct} at {was.latency_s:.2f} s)")
            dropped[model] = (f"only {', '.join(d.task for d in users)} named it, and each has an option within "
                              f"{epsilon} dev example(s) of its best without it")
    return dropped


def evaluate(decision: Decision, records: list[dict], split: str) -> tuple[int, int, float]:
    """(correct, n, mean latency) of a decided route on a split, simulated from the measured answers."""
    table = _by([r for r in records if r["task"] == decision.task], split)
    o = decision.chosen
    ids = sorted(set(table.get((o.models[0], o.variant), {})) & set(table.get((o.models[-1], o.variant), {})))
    if not ids:
        return 0, 0, 0.0
    correct, lat = simulate(o, table, ids)
    return correct, len(ids), lat


def alone(records: list[dict], task: str, model: str, split: str) -> tuple[int, int, float]:
    """A model alone on a task, plain request (what a one-model runtime gives)."""
    recs = [r for r in records if r["task"] == task and r["model"] == model and r["variant"] == "plain"
            and r["split"] == split]
    return sum(bool(r["ok"]) for r in recs), len(recs), statistics.fmean(r["latency_s"] for r in recs) if recs else 0.0


def check_quality(records: list[dict], task: str, split: str = "dev") -> dict[str, dict]:
    """Per model (plain request): how the self-checks did - flagged, precision (flagged answers that were wrong)
    and recall (wrong answers that were flagged)."""
    out = {}
    for model in sorted({r["model"] for r in records if r["task"] == task}):
        recs = [r for r in records if r["task"] == task and r["model"] == model and r["split"] == split
                and r["variant"] == "plain"]
        flagged = [r for r in recs if r.get("flags")]
        wrong = [r for r in recs if not r["ok"]]
        hit = sum(1 for r in flagged if not r["ok"])
        out[model] = {"answers": len(recs), "flagged": len(flagged), "wrong": len(wrong),
                      "precision": round(hit / len(flagged), 3) if flagged else None,
                      "recall": round(hit / len(wrong), 3) if wrong else None}
    return out


def route_update(decision: Decision, route) -> dict[str, Any]:
    """The models.yaml fields of a route that the decision sets."""
    o = decision.chosen
    upd: dict[str, Any] = {"models": list(o.models), "strategy": o.strategy,
                           "system": route.system if o.variant == "system" else "",
                           "tool": route.tool if o.variant == route.tool else None}
    if o.strategy == "cascade":
        upd["min_logprob"] = round(float(o.min_logprob), 4)
    return upd


def to_json(d: Decision) -> dict:
    return {"task": d.task, "chosen": asdict(d.chosen), "why": d.why, "dominated": d.dominated,
            "options": [asdict(o) for o in d.options]}


def run_measure(engine, examples, models, **kw) -> list[dict]:
    """measure() from synchronous code."""
    async def main():
        await engine.start()
        try:
            return await measure(engine, examples, models, **kw)
        finally:
            await engine.close()
    return asyncio.run(main())


# ---------------------------------------------------------------- the command


def report(decisions: dict[str, Decision], records: list[dict], models: list[str]) -> tuple[list[str], dict]:
    """Markdown lines and a JSON summary: each task's route with its dev and test figures, and each model alone."""
    lines = ["| task | route | dev | test | test latency s | " + " | ".join(f"{m} alone dev / test" for m in models)
             + " |", "|---" * (5 + len(models)) + "|"]
    summary: dict[str, Any] = {"tasks": {}, "totals": {}}
    totals: dict[str, list[float]] = {}
    for task, d in decisions.items():
        dev_c, dev_n, _ = evaluate(d, records, "dev")
        test_c, test_n, test_lat = evaluate(d, records, "test")
        cells = []
        row = {"route": to_json(d), "dev": [dev_c, dev_n], "test": [test_c, test_n], "test_latency_s": test_lat}
        for m in models:
            dc, dn, _ = alone(records, task, m, "dev")
            tc, tn, tl = alone(records, task, m, "test")
            cells.append(f"{dc}/{dn} / {tc}/{tn}")
            row[m] = {"dev": [dc, dn], "test": [tc, tn], "test_latency_s": tl}
            for key, c, n, lat in ((f"{m}:dev", dc, dn, 0.0), (f"{m}:test", tc, tn, tl * tn)):
                acc = totals.setdefault(key, [0, 0, 0.0])
                acc[0] += c
                acc[1] += n
                acc[2] += lat
        for key, c, n, lat in (("routes:dev", dev_c, dev_n, 0.0), ("routes:test", test_c, test_n, test_lat * test_n)):
            acc = totals.setdefault(key, [0, 0, 0.0])
            acc[0] += c
            acc[1] += n
            acc[2] += lat
        row["checks"] = check_quality(records, task)
        summary["tasks"][task] = row
        lines.append(f"| {task} | {d.chosen.label()} | {dev_c}/{dev_n} | {test_c}/{test_n} | "
                     f"{f'{test_lat:.2f}' if test_n else '-'} | "
                     + " | ".join(cells) + " |")
    for key, (c, n, lat) in totals.items():
        test = key.endswith(":test")
        summary["totals"][key] = {"correct": c, "n": n, "accuracy": round(c / n, 4) if n else None,
                                  "mean_latency_s": round(lat / n, 3) if n and test else None}
    t = summary["totals"]

    def frac(key: str) -> str:
        return f"{t[key]['correct']}/{t[key]['n']}" if key in t else "-"

    lat = t.get("routes:test", {}).get("mean_latency_s")
    lines.append(f"| **all** | (the task given: routing not included) | {frac('routes:dev')} | {frac('routes:test')} "
                 f"| {'-' if lat is None else f'{lat:.2f}'} | "
                 + " | ".join(f"{frac(m + ':dev')} / {frac(m + ':test')}" for m in models) + " |")
    lines += ["", "Self-checks (selfcheck.py) on the dev answers, plain request: flagged, precision (flagged and "
              "wrong / flagged), recall (flagged and wrong / wrong):", "",
              "| task | " + " | ".join(models) + " |", "|---" * (1 + len(models)) + "|"]
    for task, row in summary["tasks"].items():
        cells = []
        for m in models:
            q = row["checks"].get(m)
            cells.append("-" if not q else f"{q['flagged']}/{q['answers']}, p {q['precision']}, r {q['recall']}")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return lines, summary


def write_config(source: Path, target: Path, decisions: dict[str, Decision], registry) -> None:
    """A copy of models.yaml with each decided route's models, strategy, threshold, system prompt and tool,
    checked by loading it before it replaces `target` (comments are not kept: YAML is rewritten)."""
    import os
    import tempfile

    import yaml

    from swarm_edge.registry import load_registry

    doc = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
    for task, d in decisions.items():
        upd = route_update(d, registry.routes[task])
        entry = doc["routes"][task]
        for k, v in upd.items():
            if v in ("", None):
                entry.pop(k, None)
            else:
                entry[k] = v
        if upd["strategy"] == "single":
            entry.pop("min_logprob", None)
    target = Path(target)
    if not target.parent.is_dir():
        raise ConfigError(f"--write {target}: the directory {target.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise ConfigError(f"--write {target}: cannot write there ({exc})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"# written by `swarm-edge tune` from {source}; the rule: swarm_edge/tune.py\n")
            yaml.safe_dump(doc, f, sort_keys=False, allow_unicode=True, width=120)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, Path(source).stat().st_mode & 0o777)  # the permissions of the models.yaml it came from
        load_registry(Path(tmp))  # refuse to write a file that does not load
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
