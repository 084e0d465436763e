"""Tool calls, measured with the Berkeley Function Calling Leaderboard: its data and its own AST checker, the
requests sent through a real daemon's OpenAI API as an agent would send them.

Categories (bfcl-eval's BFCL_v4 files): simple_python (400), multiple (200), parallel (200), parallel_multiple
(200), irrelevance (240): 1,240 cases. Each case's functions go through BFCL's own conversion to OpenAI tools
(convert_to_tool: dots in names become underscores, "dict" -> "object", ...) with its Python-syntax note, the
question is the messages, no system prompt, greedy, tool_choice auto: what BFCL's OpenAI-style FC handler sends.
The answer's tool calls are decoded as BFCL decodes them (json.loads of the arguments, names mapped back) and
scored by bfcl_eval's ast_checker; irrelevance is right when no function is called.

Cases are split into dev and test by evalsets.split_of(case id) (the rule every evaluation set here uses): the
tools route was chosen on dev only; report the test split.

Configurations: each model alone (its id as the request's model) and `auto` (the `tools` route of models.yaml).

Needs bfcl-eval, installed without its 6 GB of dependencies (model SDKs, torch):
  .venv/bin/pip install --no-deps bfcl-eval==2026.3.23 filelock tenacity tree_sitter==0.21.3 \\
      tree-sitter-java==0.21.0 tree-sitter-javascript==0.21.4
Rerun:  .venv/bin/python benchmarks/bench_tools.py --split test [--configs auto qwen2.5-coder-0.5b] [--limit N]
Writes: benchmarks/results/tools-SPLIT.json and .md (published figures beside ours in the .md)
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import evalsets
from results_io import write_results
from route_fit import CaseLog, fit

CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance"]
DEFAULT_CONFIGS = ["auto", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
DOTS = "swarm-edge-dots"  # the checker's model name: our decoded calls carry the original dotted names
# The leaderboard's own figures (gorilla gh-pages data_non_live.csv; columns as above): Qwen2.5 instruct models
# on BFCL V3 (2025-04-25, the last snapshot listing them; same categories, earlier data revision), and models of
# the same size on V4 (2025-12-16: the data and checker of bfcl-eval 2026.3.23).
PUBLISHED = [
    ("Qwen2.5-0.5B-Instruct (FC), V3", [81.50, 78.00, 60.00, 50.00, 39.17]),
    ("Qwen2.5-1.5B-Instruct (FC), V3", [92.25, 87.00, 81.50, 75.50, 64.58]),
    ("Hammer2.1-0.5b (FC), V4", [83.25, 81.00, 69.00, 51.50, 85.00]),
    ("Qwen3-0.6B (FC), V4", [86.50, 86.00, 67.50, 69.50, 82.50]),
    ("Llama-3.2-1B-Instruct (FC), V4", [75.00, 50.50, 44.00, 15.00, 35.83]),
]


def bfcl():
    """bfcl-eval's data, conversion and checker, imported without its model registry (which imports every
    provider SDK); it also writes result/ and score/ directories under BFCL_PROJECT_ROOT at import."""
    os.environ.setdefault("BFCL_PROJECT_ROOT", tempfile.mkdtemp(prefix="bfcl-"))
    try:
        import bfcl_eval
    except ImportError:
        raise SystemExit("bfcl-eval is not installed; see this script's docstring for the command") from None
    stub = types.ModuleType("bfcl_eval.constants.model_config")
    stub.MODEL_CONFIG_MAPPING = {DOTS: types.SimpleNamespace(underscore_to_dot=False)}  # type: ignore[attr-defined]
    sys.modules.setdefault("bfcl_eval.constants.model_config", stub)
    from bfcl_eval.constants.enums import Language, ModelStyle
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    from bfcl_eval.model_handler.utils import convert_to_tool
    from bfcl_eval.utils import (
        _func_doc_language_specific_pre_processing,
        is_empty_output,
        is_function_calling_format_output,
    )

    return types.SimpleNamespace(
        data=Path(bfcl_eval.__file__).parent / "data", Language=Language, ModelStyle=ModelStyle,
        GORILLA_TO_OPENAPI=GORILLA_TO_OPENAPI, ast_checker=ast_checker, convert_to_tool=convert_to_tool,
        pre=_func_doc_language_specific_pre_processing, is_empty_output=is_empty_output,
        is_fc=is_function_calling_format_output)


def load(b, category: str, split: str | None) -> list[tuple[dict, object]]:
    def jsonl(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    cases = jsonl(b.data / f"BFCL_v4_{category}.json")
    answers_path = b.data / "possible_answer" / f"BFCL_v4_{category}.json"
    answers = {a["id"]: a["ground_truth"] for a in jsonl(answers_path)} if answers_path.exists() else {}
    return [(c, answers.get(c["id"])) for c in cases if split is None or evalsets.split_of(c["id"]) == split]


def request_of(b, case: dict, category: str) -> tuple[list[dict], list[dict], dict[str, str]]:
    """What BFCL's OpenAI-style FC handler sends: (messages, tools, sent name -> original name)."""
    functions = b.pre(copy.deepcopy(case["function"]), category)
    tools = b.convert_to_tool(functions, b.GORILLA_TO_OPENAPI, b.ModelStyle.OPENAI_COMPLETIONS)
    return copy.deepcopy(case["question"][0]), tools, names_of(case)


def judge(b, case: dict, answer, category: str, message: dict, names: dict[str, str]) -> tuple[bool, str]:
    calls = message.get("tool_calls") or []
    try:
        output = [{names.get(c["function"]["name"], c["function"]["name"]): json.loads(c["function"]["arguments"])}
                  for c in calls] or None
    except (ValueError, KeyError, TypeError) as exc:
        return False, f"undecodable call: {exc}"
    if category == "irrelevance":
        right = output is None or b.is_empty_output(output)
        return right, "" if right else "called a function"
    if output is None:
        return False, "no tool call"
    if not b.is_fc(output):
        return False, "bad call format"
    verdict = b.ast_checker(case["function"], output, answer, b.Language.PYTHON, category, DOTS)
    return bool(verdict["valid"]), "; ".join(map(str, verdict.get("error") or []))[:300]


class Daemon:
    """`swarm-edge serve` on the default swarm, on a private socket (offline: fetched models only)."""

    def __init__(self) -> None:
        import httpx2

        self.dir = Path(tempfile.mkdtemp(prefix="se-bfcl-"))
        self.socket = self.dir / "s.sock"
        exe = str(Path(sys.executable).with_name("swarm-edge"))
        self.log = open(self.dir / "daemon.log", "wb")
        self.proc = subprocess.Popen([exe, "serve", "--socket", str(self.socket), "--offline",
                                      "--request-timeout", "900"], stdout=self.log, stderr=subprocess.STDOUT)
        self.http = httpx2.Client(transport=httpx2.HTTPTransport(uds=str(self.socket)), base_url="http://swarm-edge",
                                  timeout=900)
        for _ in range(600):
            try:
                if self.http.get("/health").status_code == 200:
                    return
            except httpx2.HTTPError:
                time.sleep(0.1)
        raise SystemExit(f"the daemon did not start: see {self.dir / 'daemon.log'}")

    def close(self) -> None:
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def score(b, case: dict, answer, category: str, config: str, message: dict, latency: float, models: list[str],
          **extra) -> dict:
    right, why = judge(b, case, answer, category, message, names_of(case)) if message else (False, extra.pop("error"))
    rec = {"config": config, "id": case["id"], "category": category, "right": right, "why": why,
           "latency_s": round(latency, 3), "models": models, "calls": message.get("tool_calls"),
           "text": (message.get("content") or "")[:200], **extra}
    print(f"  {config:<20} {case['id']:<24} {'ok ' if right else 'BAD'} {latency:6.2f}s {why[:80]}",
          file=sys.stderr, flush=True)
    return rec


def names_of(case: dict) -> dict[str, str]:
    return {re.sub(r"\.", "_", f["name"]): f["name"] for f in case["function"]}


def run(b, daemon: Daemon, config: str, cases: dict[str, list], max_tokens: int, log: CaseLog) -> list[dict]:
    """Each case through the daemon's OpenAI API."""
    out = []
    for category, items in cases.items():
        for case, answer in items:
            if (rec := log.get(config, case["id"])) is None:
                messages, tools, _ = request_of(b, case, category)
                t0 = time.perf_counter()
                r = daemon.http.post("/v1/chat/completions", json={
                    "model": config, "messages": messages, "tools": tools, "temperature": 0,
                    "max_tokens": max_tokens})
                latency = time.perf_counter() - t0
                if r.status_code == 200:
                    body = r.json()
                    rec = score(b, case, answer, category, config, body["choices"][0]["message"], latency,
                                [s["model"] for s in body["swarm"]["steps"]])
                else:
                    rec = score(b, case, answer, category, config, {}, latency, [],
                                error=f"HTTP {r.status_code}: {r.text[:200]}")
                log.add(rec)
            out.append(rec)
    return out


async def measure(b, config: str, cases: dict[str, list], max_tokens: int, log: CaseLog) -> list[dict]:
    """Each case in this process, with the model's mean token log-prob measured (what a cascade would judge by):
    the records route_fit chooses the route from (--measure; models only)."""
    from swarm_edge import orchestrator
    from swarm_edge.config import DEFAULT_CONFIG, Settings
    from swarm_edge.engine import Engine
    from swarm_edge.errors import SchemaError
    from swarm_edge.registry import load_registry
    from swarm_edge.toolcalls import Toolset

    engine = Engine(load_registry(DEFAULT_CONFIG), Settings.load(threads=2), budget="8GiB", spare=False, fetch=False)
    await engine.start()
    out = []
    try:
        for category, items in cases.items():
            for case, answer in items:
                if (rec := log.get(config, case["id"])) is None:
                    messages, tools, _ = request_of(b, case, category)
                    t0 = time.perf_counter()
                    try:
                        toolset = Toolset.from_openai(tools, "auto", True)
                    except SchemaError as exc:  # what the daemon answers with a 400
                        log.add(rec := score(b, case, answer, category, config, {}, 0.0, [], error=str(exc)[:200]))
                        out.append(rec)
                        continue
                    events = orchestrator.stream(engine, messages=messages, model_id=config, max_tokens=max_tokens,
                                                 tools=toolset, logprobs=True)
                    got = await orchestrator.answer_of(events)
                    last = got.steps[-1]
                    message = {"content": got.text, "tool_calls": [
                        {"function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                        for c in got.tool_calls]}
                    rec = score(b, case, answer, category, config, message, time.perf_counter() - t0,
                                [s.model for s in got.steps], sure=last.mean_logprob,
                                problem=last.extra.get("problem") if last.extra.get("valid") is False else None)
                    log.add(rec)
                out.append(rec)
    finally:
        await engine.close()
    return out


def split_sha256(cases: dict[str, list]) -> str:
    """sha256 of the split's case ids (category order, file order): which cases a table counts, checkable."""
    ids = [case["id"] for c in CATEGORIES for case, _ in cases.get(c, [])]
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def table(split: str, results: dict[str, list[dict]], ids_sha: str = "") -> list[str]:
    head = "| configuration | " + " | ".join(CATEGORIES) + " | all | median latency (s) |"
    lines = [f"# Tool calls: BFCL (bfcl-eval 2026.3.23, BFCL_v4 data), {split} split, scored by BFCL's AST checker",
             "", f"Case ids of this split: sha256 {ids_sha}." if ids_sha else "",
             "", head, "|---" * (len(CATEGORIES) + 3) + "|"]
    for config, recs in results.items():
        cells = []
        for cat in CATEGORIES:
            rs = [r for r in recs if r["category"] == cat]
            cells.append(f"{100 * sum(r['right'] for r in rs) / len(rs):.1f} ({len(rs)})" if rs else "-")
        total = 100 * sum(r["right"] for r in recs) / max(1, len(recs))
        # the median: a case run while something else held the CPU (a resumed run spans days) does not move it
        median = statistics.median(r["latency_s"] for r in recs) if recs else 0.0
        lines.append(f"| {config} | " + " | ".join(cells) + f" | {total:.1f} ({len(recs)}) | {median:.2f} |")
    lines += ["", "Published, for comparison (all cases of each category; the leaderboard's own runs):", "", head,
              "|---" * (len(CATEGORIES) + 3) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{v:.1f}" for v in vals) + " | | |" for name, vals in PUBLISHED]
    lines += ["", f"Rerun: `.venv/bin/python benchmarks/bench_tools.py --split {split}`"]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=["dev", "test", "all"], required=True)
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    ap.add_argument("--categories", nargs="+", default=CATEGORIES, choices=CATEGORIES)
    ap.add_argument("--limit", type=int, default=None, help="only the first N cases of each category")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--name", default=None, help="results file name (default tools-SPLIT)")
    ap.add_argument("--measure", action="store_true",
                    help="run in this process with each model's log-probs measured, then choose the tools route "
                         "(dev split, models only)")
    ap.add_argument("--epsilon", type=int, default=None,
                    help="--measure: answers within which options tie (default: one standard error of the best)")
    ap.add_argument("--fresh", action="store_true", help="forget the cases a cut-off run of this name finished")
    ap.add_argument("--report", action="store_true",
                    help="write the table from the cases already in the case log (a cut-off run), running none")
    args = ap.parse_args()
    b = bfcl()
    split = None if args.split == "all" else args.split
    cases = {c: load(b, c, split)[:args.limit] if args.limit else load(b, c, split) for c in args.categories}
    print(f"{sum(map(len, cases.values()))} cases: " + ", ".join(f"{c} {len(v)}" for c, v in cases.items()),
          file=sys.stderr)
    name = args.name or f"tools-{args.split}" + ("-measured" if args.measure else "")
    log = CaseLog(name, fresh=args.fresh)
    if args.report:  # what a cut-off run finished: each category's count shows how far it got
        results = {config: [rec for items in cases.values() for case, _ in items
                            if (rec := log.get(config, case["id"])) is not None] for config in args.configs}
        fitted = []
    elif args.measure:
        if args.split != "dev" or "auto" in args.configs:
            raise SystemExit("--measure chooses the route: the dev split, models only")
        results = {config: asyncio.run(measure(b, config, cases, args.max_tokens, log)) for config in args.configs}
        fitted = fit("tools", {c: [{**r, "ok": r["right"]} for r in recs] for c, recs in results.items()},
                     args.epsilon)
    else:
        daemon = Daemon()
        try:
            results = {config: run(b, daemon, config, cases, args.max_tokens, log) for config in args.configs}
        finally:
            daemon.close()
        fitted = []
    ids_sha = split_sha256(cases)
    print(f"the {args.split} split's case ids: sha256 {ids_sha}", file=sys.stderr)
    lines = table(args.split, results, ids_sha)
    lines[-1] = lines[-1].replace(f"--split {args.split}", " ".join(a for a in sys.argv[1:] if a != "--report"))
    write_results(name, {"split": args.split, "limit": args.limit, "ids_sha256": ids_sha, "results": results},
                  lines + ([""] + fitted if fitted else []))


if __name__ == "__main__":
    main()
