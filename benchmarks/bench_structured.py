"""Structured outputs: schema validity and field accuracy of each model and of `auto` on the extraction set, and
what the grammar costs in decode speed.

The set: benchmarks/data/eval/extract.jsonl (64 extraction tasks with JSON schemas: nested objects, enums, arrays,
nullable fields, dates, $defs; written by a helper who never saw the router, the prompts or models.yaml), split
into dev and test by evalsets.split_of; the test split's sha256 is printed (and frozen in
data/eval/EXTRACT_TEST_SHA256 the first time). Every request is `response_format: json_schema, strict: true`.

Scores per configuration:
  valid     the answer parses and validates against the schema (jsonschema; what strict promises)
  fields    leaf values right / leaf values expected (strings compared case- and space-insensitively, numbers
            exactly, times and date-times without their zone: the grammar makes the model write one)
  exact     the whole object right
Cost: tok/s of one model decoding the same prompt under the item's grammar vs without it (greedy, same
max_tokens, each run twice, interleaved, best of two), over the first --cost-items items: the ratio's median.
Through the worker's backend, so with its grammar-first sampler (workers/sampler.py). --cost-only measures
just that (writes structured-SPLIT-cost.*).

Rerun:  .venv/bin/python benchmarks/bench_structured.py --split dev|test [--configs auto qwen2.5-coder-0.5b ...]
Writes: benchmarks/results/structured-SPLIT.json and .md
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import statistics
import sys
import time
from pathlib import Path

import evalsets
from results_io import write_results
from route_fit import fit

DATA = Path(__file__).resolve().parent / "data" / "eval" / "extract.jsonl"
FROZEN = DATA.with_name("EXTRACT_TEST_SHA256")
DEFAULT_CONFIGS = ["auto", "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "smollm2-135m"]
ZONE = re.compile(r"(\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def load(split: str | None) -> list[dict]:
    items = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [i for i in items if split is None or evalsets.split_of(i["id"]) == split]


def test_digest() -> str:
    h = hashlib.sha256()
    for item in load("test"):
        h.update(json.dumps(item, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def check_frozen() -> str:
    digest = test_digest()
    if not FROZEN.exists():
        FROZEN.write_text(digest + "\n")
    elif FROZEN.read_text().strip() != digest:
        raise SystemExit(f"the extraction test split changed: {digest} != {FROZEN.read_text().strip()}")
    return digest


def leaves(value, path=""):
    """(path, leaf) pairs of a JSON value."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, f"{path}/{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, f"{path}/{i}")
    else:
        yield path, value


def same(expected, got) -> bool:
    if isinstance(expected, str) and isinstance(got, str):
        def norm(s: str) -> str:
            return " ".join(ZONE.sub(r"\1", s.strip()).lower().split())
        return norm(expected) == norm(got)
    if isinstance(expected, bool) or isinstance(got, bool):
        return expected is got
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        return abs(expected - got) < 1e-6
    return expected == got


def score(item: dict, text: str, problem: str | None) -> dict:
    try:
        got = json.loads(text)
    except ValueError:
        got = None
    want = dict(leaves(item["expected"]))
    have = dict(leaves(got)) if got is not None else {}
    right = sum(1 for p, v in want.items() if p in have and same(v, have[p]))
    return {"valid": problem is None, "fields_right": right, "fields": len(want),
            "exact": got is not None and right == len(want) and len(have) == len(want)}


def prompt_of(item: dict) -> list[dict]:
    return [{"role": "user", "content": f"{item['instruction']}\n\n{item['text']}"}]


def output_of(item: dict):
    from swarm_edge.structured import from_openai

    return from_openai({"type": "json_schema", "json_schema": {"name": "extract", "schema": item["schema"],
                                                              "strict": True}})


async def run_config(config: str, items: list[dict], max_tokens: int, measure: bool = False) -> list[dict]:
    from swarm_edge import orchestrator
    from swarm_edge.config import DEFAULT_CONFIG, Settings
    from swarm_edge.engine import Engine
    from swarm_edge.registry import load_registry

    registry = load_registry(DEFAULT_CONFIG)
    model_id = "auto" if config == "auto" else registry.get(config).id
    engine = Engine(registry, Settings.load(threads=2), budget="8GiB", spare=False, fetch=False)
    await engine.start()
    out = []
    try:
        for item in items:
            t0 = time.perf_counter()
            try:
                events = orchestrator.stream(engine, messages=prompt_of(item), model_id=model_id,
                                             output=output_of(item), max_tokens=max_tokens, logprobs=measure)
                answer = await orchestrator.answer_of(events)
                text, err = answer.text, None
                problem = answer.steps[-1].get("problem") if answer.steps[-1].get("valid") is False else None
            except Exception as exc:  # a failed answer is a wrong one; say why
                answer, text, err, problem = None, "", f"{type(exc).__name__}: {exc}", "error"
            rec = {"id": item["id"], "latency_s": round(time.perf_counter() - t0, 3), "error": err,
                   "problem": problem, "models": [s["model"] for s in answer.steps] if answer else [],
                   "sure": answer.steps[-1].mean_logprob if answer else None,
                   "answer": text[:600], **score(item, text, problem)}
            out.append(rec)
            print(f"  {config:<20} {item['id']:<12} {'valid' if rec['valid'] else 'INVALID':<8} "
                  f"{rec['fields_right']}/{rec['fields']} {rec['latency_s']:6.2f}s {'+'.join(rec['models'])}",
                  file=sys.stderr, flush=True)
    finally:
        await engine.close()
    return out


def cost(model_id: str, items: list[dict], max_tokens: int) -> list[float]:
    """Grammar-constrained ÷ free decode tok/s on one model, per item (same prompt, same max_tokens), through the
    worker's own backend: what a request gets (grammar-first sampling, workers/sampler.py)."""
    from swarm_edge.config import DEFAULT_CONFIG, Settings
    from swarm_edge.registry import load_registry
    from swarm_edge.sources import ensure_model
    from swarm_edge.workers import GenerateRequest, open_backend

    registry = load_registry(DEFAULT_CONFIG)
    spec = registry.get(model_id)
    backend = open_backend(spec, ensure_model(Settings.load(), spec, registry.base_dir, fetch=False), threads=2)
    ratios = []
    try:
        for item in items:
            speeds: dict[str, list[float]] = {"free": [], "grammar": []}
            for _ in range(2):
                for kind in ("free", "grammar"):
                    done = list(backend.generate(GenerateRequest(
                        messages=prompt_of(item), max_tokens=max_tokens, temperature=0.0, cache_prompt=False,
                        json_schema=item["schema"] if kind == "grammar" else None)))[-1]
                    if done.get("decode_tok_s"):  # timed from the first token: decode only
                        speeds[kind].append(done["decode_tok_s"])
            if speeds["free"] and speeds["grammar"]:
                ratios.append(max(speeds["grammar"]) / max(speeds["free"]))
            print(f"  cost {item['id']:<12} {ratios[-1] if ratios else float('nan'):.3f}", file=sys.stderr, flush=True)
    finally:
        backend.close()
    return ratios


def table(split: str, digest: str, results: dict[str, list[dict]], ratios: dict[str, list[float]]) -> list[str]:
    lines = [f"# Structured outputs: the extraction set, {split} split", "",
             f"{len(next(iter(results.values()), []))} items, `response_format` json_schema strict; test split "
             f"sha256 {digest}", "",
             "| configuration | valid | fields right | exact | mean latency (s) |", "|---|---:|---:|---:|---:|"]
    for config, recs in results.items():
        n = len(recs) or 1
        fields = sum(r["fields"] for r in recs) or 1
        lines.append(f"| {config} | {sum(r['valid'] for r in recs) / n:.3f} | "
                     f"{sum(r['fields_right'] for r in recs) / fields:.3f} | {sum(r['exact'] for r in recs) / n:.3f} | "
                     f"{statistics.mean(r['latency_s'] for r in recs) if recs else 0:.2f} |")
    for model, rs in ratios.items():
        if rs:
            lines += ["", f"Grammar cost on {model}: constrained ÷ free decode tok/s, median "
                          f"{statistics.median(rs):.3f} (min {min(rs):.3f}, {len(rs)} items)"]
    flags = "" if results else f" --cost-only --cost-items {len(next(iter(ratios.values()), []))}"
    lines += ["", f"Rerun: `.venv/bin/python benchmarks/bench_structured.py --split {split}{flags}`"]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=["dev", "test"], required=True)
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=400)
    ap.add_argument("--cost-model", default="qwen2.5-coder-0.5b", help="the model the grammar's cost is measured on")
    ap.add_argument("--cost-items", type=int, default=8)
    ap.add_argument("--cost-only", action="store_true", help="measure only the grammar's cost")
    ap.add_argument("--measure", action="store_true",
                    help="measure each model's log-probs and choose the json route (dev split, models only; an "
                         "answer counts as right when the whole object is)")
    ap.add_argument("--epsilon", type=int, default=None,
                    help="--measure: answers within which options tie (default: one standard error of the best)")
    args = ap.parse_args()
    digest = check_frozen()
    print(f"extraction test split sha256 {digest}", file=sys.stderr)
    items = load(args.split)[:args.limit] if args.limit else load(args.split)
    if args.measure and (args.split != "dev" or "auto" in args.configs):
        raise SystemExit("--measure chooses the route: the dev split, models only")
    results = {} if args.cost_only else {c: asyncio.run(run_config(c, items, args.max_tokens, args.measure))
                                         for c in args.configs}
    fitted = fit("json", {c: [{**r, "ok": r["exact"]} for r in recs] for c, recs in results.items()},
                 args.epsilon) if args.measure else []
    ratios = {args.cost_model: cost(args.cost_model, items[:args.cost_items], 48)} if args.cost_items else {}
    name = f"structured-{args.split}" + ("-cost" if args.cost_only else "-measured" if args.measure else "")
    write_results(name, {"split": args.split, "test_sha256": digest, "items": len(items),
                         "results": results, "grammar_cost": ratios},
                  table(args.split, digest, results, ratios)[:-1]
                  + [f"Rerun: `.venv/bin/python benchmarks/bench_structured.py {' '.join(sys.argv[1:])}`"]
                  + ([""] + fitted if fitted else []))


if __name__ == "__main__":
    main()
