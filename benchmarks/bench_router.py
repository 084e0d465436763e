"""Router latency and accuracy: a full route vs a bare minilm-l6 embedding of the same text, one run.

route  swarm_edge.router_host.Router.route(text): keyword rules, one minilm forward pass pooled over the
       instruction head and over the whole prompt, similarity to the task centroids, softmax, model choice
bare   the same ONNX file and tokenizer straight through onnxruntime + tokenizers (no swarm-edge code):
       encode, run, mean-pool, normalise one text; same session options as swarm-edge's backend
Same texts (the single-task requests of the evaluation sets, benchmarks/evalsets.py: tasks + single, both
splits), same thread count (1), alternating route/bare per text, `--reps` passes; p50 and p90 of each, and
p50 route / p50 bare.
Quality: accuracy, expected calibration error (10 bins) and confusion on the dev split (its prompts are among
the head's training examples: not an estimate) and on the frozen test split (never trained or tuned on: the
estimate; its sha256 is printed), and how often an unsure route (confidence < min_confidence) was wrong.

Rerun:  .venv/bin/python benchmarks/bench_router.py [--reps 5]
Writes: benchmarks/results/router.json and benchmarks/results/router.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter, defaultdict

import evalsets
import numpy as np
from results_io import default_router, write_results


def bare_embedder(files: dict, max_length: int):
    """minilm-l6 without swarm-edge: the raw libraries, one text at a time."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(files["tokenizer"]))
    tok.enable_truncation(max_length=max_length)
    # this tokenizer.json pads every text to 128 tokens ("Fixed" padding in the file): a bare session fed
    # that is ~4x slower and pools over padding. One text needs no padding (swarm-edge's backend pads a
    # batch to its longest text instead).
    tok.no_padding()
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    so.enable_cpu_mem_arena = False  # as swarm-edge's backend sets them
    so.enable_mem_pattern = False
    sess = ort.InferenceSession(str(files["model"]), sess_options=so, providers=["CPUExecutionProvider"])

    def embed(text: str):
        enc = tok.encode(text)
        ids = np.array([enc.ids], dtype=np.int64)
        out = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                              "token_type_ids": np.zeros_like(ids)})[0][0]
        v = out.mean(axis=0)
        return v / np.linalg.norm(v)
    return embed


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    registry, spec, files, router = default_router()
    bare = bare_embedder(files, spec.embedding.max_length)
    announce = evalsets.announce("dev and test")
    sets = {split: [{"prompt": i["prompt"], "task": i["task"]} for name in ("tasks", "single")
                    for i in evalsets.load(name, split)] for split in ("dev", "test")}
    texts = [r["prompt"] for rows in sets.values() for r in rows]
    for t in texts[:20]:  # warm both paths
        router.route(t)
        bare(t)
    t_route, t_bare = [], []
    for _ in range(args.reps):
        for t in texts:
            a = time.perf_counter()
            router.route(t)
            b = time.perf_counter()
            bare(t)
            c = time.perf_counter()
            t_route.append(b - a)
            t_bare.append(c - b)
    ratio = statistics.median(t_route) / statistics.median(t_bare)

    quality = {}
    floor = registry.router.min_confidence
    for name, rows in sets.items():
        routes = [router.route(r["prompt"]) for r in rows]
        confusion = defaultdict(Counter)
        for route, row in zip(routes, rows, strict=True):
            confusion[row["task"]][route.task] += 1
        conf = np.array([r.confidence for r in routes])
        right = np.array([r.task == row["task"] for r, row in zip(routes, rows, strict=True)])
        ece = float(sum(abs(conf[m].mean() - right[m].mean()) * m.mean()
                        for lo in np.arange(0, 1, 0.1) if (m := (conf > lo) & (conf <= lo + 0.1)).any()))
        unsure = conf < floor
        quality[name] = {"n": len(rows), "accuracy": round(float(right.mean()), 4), "ece": round(ece, 4),
                         "unsure": int(unsure.sum()), "unsure_wrong": int((unsure & ~right).sum()),
                         "sure_wrong": int((~unsure & ~right).sum()),
                         "confusion": {t: dict(c) for t, c in confusion.items()},
                         "errors": [{"prompt": row["prompt"], "task": row["task"], "routed": r.task,
                                     "confidence": r.confidence}
                                    for r, row in zip(routes, rows, strict=True) if r.task != row["task"]]}
    sem = router._get()

    ms = 1000
    lines = ["# Router latency and accuracy (one run; rerun: .venv/bin/python benchmarks/bench_router.py)", "",
             f"{len(texts)} texts x {args.reps} reps, 1 thread, alternating per text.", "",
             "| path | p50 ms | p90 ms |", "|---|---|---|",
             f"| route (rules + embedding + scoring + model choice) | {statistics.median(t_route) * ms:.2f} "
             f"| {pct(t_route, 0.9) * ms:.2f} |",
             f"| bare minilm-l6 embedding (onnxruntime + tokenizers) | {statistics.median(t_bare) * ms:.2f} "
             f"| {pct(t_bare, 0.9) * ms:.2f} |", "",
             f"**p50 route / p50 bare embedding = {ratio:.3f}** (bar: <= 1.2)", "",
             f"Quality: {announce}; the head's examples: {len(sem.examples)} (dev's prompts among them), "
             f"softmax temperature {sem.head.temperature:.3f} (fitted on held-out examples).", "",
             "| split | prompts | accuracy | ECE | unsure (conf < " + f"{floor}) | of them wrong | wrong but sure |",
             "|---|---|---|---|---|---|---|"]
    for name, q in quality.items():
        lines.append(f"| {name}{' (in training)' if name == 'dev' else ''} | {q['n']} | {q['accuracy']:.3f} "
                     f"| {q['ece']:.3f} | {q['unsure']} | {q['unsure_wrong']} | {q['sure_wrong']} |")
    lines += ["", "Confusion on the test split (true -> predicted):", ""]
    for t, c in quality["test"]["confusion"].items():
        lines.append(f"- {t}: {dict(c)}")
    write_results("router", {"reps": args.reps, "texts": len(texts), "p50_route_ms": statistics.median(t_route) * ms,
                             "p50_bare_ms": statistics.median(t_bare) * ms, "p90_route_ms": pct(t_route, 0.9) * ms,
                             "p90_bare_ms": pct(t_bare, 0.9) * ms, "ratio_p50": ratio, "quality": quality,
                             "split": announce, "examples": len(sem.examples),
                             "temperature": sem.head.temperature}, lines)


if __name__ == "__main__":
    main()
