"""Fuzz campaign for the ONNX backend's load: mutants of the real all-MiniLM-L6-v2 model.onnx (int8, 23 MB), of a
tiny hand-built BERT-shaped graph with the same vocabulary size, and of the real tokenizer.json.

Every input is loaded with ONNXBackend and embeds two texts in a fork of a process that has imported onnxruntime
(the Loader of tests/workers/test_onnx_fuzz.py, which also holds the mutators), with a memory limit and a
timeout. Verdicts: loaded and embedded to unit vectors ("accepted"); refused at load with a CorruptModelError
(our structure check, before onnxruntime) or ModelLoadError (onnxruntime or the load probe) whose message names
the file ("refused"); or a finding: another exception ("other"), a failure only at embed ("late"), a refusal
not naming the file ("unclear"), wrong vectors, a native crash (the exit signal) or a hang (over --timeout).
Forks that print on stdout are counted too (onnxruntime's "EP Error ... Falling back" noise).

Besides the random mutants, the "blank" target names each input and output of the first and the middle node of
every op type in the real model "" in turn (how the crashes were found). Tokenizer mutants load with the tiny
graph (same 30,522 ids, same three inputs) unless --tokenizer-model real: a load of the real model takes ~1 s,
the tiny one ~20 ms. Input i of target t is random.Random("SEED/t/i"): `--only t:i --keep-dir DIR` writes that
one input again.

Rerun:  nice -n 10 .venv/bin/python benchmarks/fuzz_onnx.py [--n 2000] [--seed 1] [--targets model,tiny,tokenizer,blank]
Writes: benchmarks/results/fuzz_onnx.json and benchmarks/results/fuzz_onnx.md
"""

from __future__ import annotations

import argparse
import collections
import random
import re
import sys
import tempfile
import time
from pathlib import Path

from results_io import write_results

from swarm_edge.config import DEFAULT_CONFIG, Settings
from swarm_edge.registry import load_registry

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the mutators and the loader live with the fuzz test: tests.workers.test_onnx_fuzz

from swarm_edge.workers.onnx import MAX_TOKENIZER_BYTES, check_onnx  # noqa: E402
from tests.workers.test_onnx import tiny_model  # noqa: E402
from tests.workers.test_onnx_fuzz import (  # noqa: E402
    VIOLATIONS,
    Loader,
    OnnxMutator,
    TokenizerMutator,
    judge,
    parse_tree,
    serialize,
)

TARGETS = {"model": "model.onnx (real)", "tiny": "model.onnx (tiny graph)", "tokenizer": "tokenizer.json (real)",
           "blank": "model.onnx (real), each op's inputs and outputs named '' in turn"}


def real_files() -> dict[str, Path]:
    """The cached minilm-l6 files (fetched by the tests into .cache/test-home), verified, never downloaded."""
    settings = Settings.load(home=REPO / ".cache" / "test-home", config=DEFAULT_CONFIG, threads=1)
    registry = load_registry(DEFAULT_CONFIG)
    from swarm_edge.sources import ensure_model

    return ensure_model(settings, registry.get("minilm-l6"), registry.base_dir, fetch=False)


def reason(result: dict) -> str:
    """A refusal's message with numbers and paths taken out, to count kinds of refusal."""
    msg = result.get("message", "")
    msg = re.sub(r"onnxruntime could not load \S+: ", "onnxruntime: ", msg)
    msg = re.sub(r"^(\S*/)?(model\.onnx|tokenizer\.json)", r"\2", msg)
    msg = re.sub(r"\[ONNXRuntimeError\] : \d+ : ", "", msg)
    msg = re.sub(r"'[^']{0,80}'", "'…'", msg)
    msg = re.sub(r"(?<!UTF-)\d+(,\d{3})*", "N", msg)
    return f"{result['type']}: {msg[:140]}"


def blank_names(data: bytes):
    """(kind, what, bytes): every input and output of the first and the middle node of each op type in a model,
    named "" (omitted) one at a time - the class of edit that made onnxruntime segfault."""
    tree = parse_tree(memoryview(data))
    graph = next(f[2] for f in tree if f[0] == 7)
    by_op = collections.defaultdict(list)
    for n in (f for f in graph if f[0] == 1):
        by_op[next(bytes(f[2]).decode() for f in n[2] if f[0] == 4)].append(n)
    for op, nodes in sorted(by_op.items()):
        for n in {id(x): x for x in (nodes[0], nodes[len(nodes) // 2])}.values():
            for field, label in ((1, "input"), (2, "output")):
                for k, slot in enumerate([f for f in n[2] if f[0] == field]):
                    old, slot[2] = slot[2], b""
                    yield "blank", f"{op} {label} {k} ({bytes(old).decode()[:40]}) named ''", serialize(tree)
                    slot[2] = old


def inputs(target: str, n: int, seed: int, files: dict, only: int | None):
    """(i, kind, what, bytes) for each input of a target."""
    if target == "blank":
        yield from ((i, *x) for i, x in enumerate(blank_names(files["model"].read_bytes())) if only in (None, i))
        return
    if target == "tokenizer":
        mutator = TokenizerMutator(files["tokenizer"].read_text(), cap=MAX_TOKENIZER_BYTES)
    else:
        mutator = OnnxMutator(files["model"].read_bytes() if target == "model" else tiny_model(30522, 8))
    for i in range(n) if only is None else [only]:
        yield (i, *mutator.mutate(random.Random(f"{seed}/{target}/{i}")))


def campaign(target: str, n: int, seed: int, files: dict, loader: Loader, workdir: Path, keep: Path | None,
             only: int | None = None) -> dict:
    """Run the inputs of one target; counts, timings, the commonest refusals and every finding."""
    fixed_model = files["model"] if files.get("tokenizer_model") == "real" else workdir / "tiny.onnx"
    name = "tokenizer.json" if target == "tokenizer" else "model.onnx"
    counts, by_kind, reasons = collections.Counter(), collections.Counter(), collections.Counter()
    by_class, findings, printed, seconds = collections.Counter(), [], [], []
    t0 = time.monotonic()
    for i, kind, what, data in inputs(target, n, seed, files, only):
        (workdir / name).write_bytes(data)
        model = workdir / "model.onnx" if target != "tokenizer" else fixed_model
        tok = workdir / "tokenizer.json" if target == "tokenizer" else files["tokenizer"]
        result = loader.run(model, tok)
        verdict = judge(result, name)
        counts[verdict] += 1
        by_kind[f"{kind}: {verdict}"] += 1
        seconds.append(result["seconds"])
        if verdict == "refused":
            reasons[reason(result)] += 1
            by_class[result["type"]] += 1
        if "stdout" in result:
            printed.append({"input": i, "kind": kind, "what": what, "stdout": result["stdout"][:300]})
        if verdict in VIOLATIONS or only is not None:
            findings.append({"input": i, "kind": kind, "what": what, "verdict": verdict, **result})
            if keep:
                keep.mkdir(parents=True, exist_ok=True)
                (keep / f"{target}-{seed}-{i}-{name}").write_bytes(data)
        if (i + 1) % 200 == 0:
            print(f"{TARGETS[target]}: {i + 1}/{n} {dict(counts)}", file=sys.stderr, flush=True)
    return {"target": TARGETS[target], "inputs": sum(counts.values()), "counts": dict(counts),
            "refused_by": dict(by_class), "by_kind": dict(sorted(by_kind.items())),
            "reasons": reasons.most_common(15), "findings": findings, "printed_on_stdout": printed,
            "seconds_total": round(time.monotonic() - t0, 1), "seconds_mean": round(sum(seconds) / len(seconds), 3),
            "seconds_max": max(seconds)}


def check_time(model: Path) -> float:
    """Least of five runs of the structure check on the real model, in seconds."""
    data = model.read_bytes()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        check_onnx(data, model.name)
        best = min(best, time.perf_counter() - t0)
    return best


def table(results: list[dict], args, check_s: float, model_bytes: int) -> list[str]:
    cols = ("accepted", "refused", "other", "late", "unclear", "bad_vectors", "crash", "hang")
    lines = ["# ONNX backend load: fuzz campaign", "",
             f"`nice -n 10 .venv/bin/python benchmarks/fuzz_onnx.py --n {args.n} --seed {args.seed} "
             f"--targets {args.targets} --tokenizer-model {args.tokenizer_model}`", "",
             "Each input: ONNXBackend load + one embed of two texts, in a fork (4 GiB address-space limit, "
             f"{args.timeout:g} s timeout). Structure check on the real {model_bytes:,}-byte model: "
             f"{check_s * 1000:.1f} ms (least of 5).", "",
             "| file | inputs | " + " | ".join(cols) + " | refused by check / by onnxruntime+probe"
             " | s/input (mean, max) |",
             "|---|" + "---:|" * (len(cols) + 3)]
    for r in results:
        c, by = r["counts"], r["refused_by"]
        lines.append(f"| {r['target']} | {r['inputs']:,} | " + " | ".join(f"{c.get(k, 0):,}" for k in cols)
                     + f" | {by.get('CorruptModelError', 0):,} / {by.get('ModelLoadError', 0):,}"
                     + f" | {r['seconds_mean']:.3f}, {r['seconds_max']:.2f} |")
    for r in results:
        lines += ["", f"## {r['target']}", "", "| mutation: verdict | count |", "|---|---:|"]
        lines += [f"| {k} | {v:,} |" for k, v in r["by_kind"].items()]
        lines += ["", "| commonest refusals | count |", "|---|---:|"]
        lines += [f"| {k.replace('|', '/')} | {v:,} |" for k, v in r["reasons"]]
        lines += ["", f"Findings: {len(r['findings'])}" + ("" if r["findings"] else " (none)")]
        lines += [f"- input {f['input']} ({f['kind']}: {f['what'][:100]}): {f['verdict']} "
                  f"{f.get('signal') or f.get('type', '')} {str(f.get('message', f.get('stderr', '')))[:200]}"
                  for f in r["findings"][:20]]
        lines += [f"Printed on stdout: {len(r['printed_on_stdout'])}"]
        lines += [f"- input {p['input']} ({p['kind']}): {p['stdout'][:150]!r}" for p in r["printed_on_stdout"][:5]]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="mutants per target")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--targets", default="model,tiny,tokenizer,blank")
    ap.add_argument("--tokenizer-model", choices=("tiny", "real"), default="tiny")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per input before it counts as a hang")
    ap.add_argument("--keep-dir", type=Path, help="write the inputs of findings here")
    ap.add_argument("--only", help="TARGET:I - run (and keep) one input")
    args = ap.parse_args()
    files = dict(real_files())
    files["tokenizer_model"] = args.tokenizer_model
    targets = args.targets.split(",")
    only = None
    if args.only:
        target, _, i = args.only.partition(":")
        targets, only = [target], int(i)
    with tempfile.TemporaryDirectory(prefix="fuzz-onnx-") as tmp:
        workdir = Path(tmp)
        (workdir / "tiny.onnx").write_bytes(tiny_model(30522, 8))
        loader = Loader(workdir, timeout=args.timeout)
        try:
            results = [campaign(t, args.n, args.seed, files, loader, workdir, args.keep_dir, only) for t in targets]
        finally:
            loader.close()
    if only is not None:
        print(results[0]["findings"])
        return
    check_s = check_time(files["model"])
    data = {"args": vars(args) | {"keep_dir": str(args.keep_dir)}, "check_seconds_real_model": round(check_s, 4),
            "results": results}
    write_results("fuzz_onnx", data, table(results, args, check_s, files["model"].stat().st_size))


if __name__ == "__main__":
    main()
