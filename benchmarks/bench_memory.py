"""Memory per model: what each GGUF model's memory settings (ModelSpec.n_ubatch, kv_type, mmap) cost and save.

For each model and each setting, a fresh process loads the model as a worker does (GGUFBackend with the options
models.yaml would give it), runs the footprint calibration (one full batch: the largest working set a request
touches) and reads its peak PSS the way the worker reports it; then it answers one chat prompt of about 300
tokens afresh (greedy, 64 tokens) and times prompt evaluation and decode. "same text" compares the greedy answer
with the model's default setting: a setting that changes answers must earn its place on the task suite.

Rerun:  .venv/bin/python benchmarks/bench_memory.py [--models ID ...] [--threads 2]
Writes: benchmarks/results/memory.json and .md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from results_io import fetched_models, write_results

from swarm_edge.config import DEFAULT_CONFIG, Settings
from swarm_edge.registry import load_registry

SETTINGS = [  # (label, changes over the model's models.yaml entry)
    ("default", {}),
    ("n_ubatch 64", {"n_ubatch": 64}),
    ("n_ubatch 32", {"n_ubatch": 32}),
    ("kv q8_0", {"kv_type": "q8_0"}),
    ("n_ubatch 32 + kv q8_0", {"n_ubatch": 32, "kv_type": "q8_0"}),
    ("mmap", {"mmap": True}),
]
TEXT = ("The lighthouse keeper kept a log of every ship that passed, the weather at dawn and dusk, and the state of "
        "the lamp. ") * 12
PROMPT = [{"role": "user", "content": f"{TEXT}\n\nSummarise the text above in two sentences."}]

CHILD = r"""
import json, sys, time
from swarm_edge.workers.base import GenerateRequest
from swarm_edge.workers.gguf import GGUFBackend
from swarm_edge.workers.process import _pss
path, options, messages = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
t0 = time.perf_counter()
b = GGUFBackend(path, options=options)
load_s = time.perf_counter() - t0
b.calibrate()
pss = _pss()
text, done = [], {}
for ev in b.generate(GenerateRequest(messages=messages, max_tokens=64, temperature=0.0, cache_prompt=False)):
    if ev["type"] == "token":
        text.append(ev["text"])
    else:
        done = ev
print(json.dumps({"load_s": load_s, "pss": pss, "pss_after": _pss(), "text": "".join(text),
                  "prompt_tokens": done.get("prompt_tokens"), "ttft_s": done.get("ttft_s"),
                  "decode_tok_s": done.get("decode_tok_s")}))
"""


def measure(path: str, options: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, path, json.dumps(options), json.dumps(PROMPT)],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    from swarm_edge.workers import backend_options

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    settings = Settings.load(threads=args.threads)
    registry = load_registry(DEFAULT_CONFIG)
    rows = []
    for spec, files in fetched_models(settings, registry, args.models):
        base = None
        for label, change in SETTINGS:
            print(f"{spec.id}: {label} ...", file=sys.stderr, flush=True)
            options = {**backend_options(spec.model_copy(update=change), files, settings.threads)}
            r = {"model": spec.id, "setting": label, "options": change, **measure(str(files["model"]), options)}
            base = base or r
            r["same_text"] = r.get("text") == base.get("text")
            rows.append(r)
    if not rows:
        print("no GGUF model is fetched: run `swarm-edge models fetch` first", file=sys.stderr)
        return 1
    mib = 2 ** 20
    lines = ["# Memory per model: each setting's peak PSS (after the footprint calibration), prompt and decode speed",
             "", f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {settings.threads} threads, a fresh process per row, "
             f"a ~300-token prompt answered afresh (greedy, 64 tokens). Rerun: "
             "`.venv/bin/python benchmarks/bench_memory.py`", "",
             "| model | setting | peak PSS MiB | vs default | prompt tok/s | decode tok/s | load s | same text |",
             "|---|---|---|---|---|---|---|---|"]
    defaults = {r["model"]: r for r in rows if r["setting"] == "default"}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['setting']} | error: {r['error']} | | | | | |")
            continue
        d = defaults[r["model"]]
        prompt_rate = (r["prompt_tokens"] or 0) / r["ttft_s"] if r.get("ttft_s") else 0.0
        lines.append(f"| {r['model']} | {r['setting']} | {r['pss'] / mib:,.0f} | {r['pss'] / d['pss']:.2f} | "
                     f"{prompt_rate:.0f} | {r['decode_tok_s'] or 0:.1f} | {r['load_s']:.1f} | {r['same_text']} |")
    write_results("memory", {"threads": settings.threads, "rows": rows}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
