"""Fuzz campaign for the GGUF structure check: mutated real and synthetic GGUF files, coverage-guided.

Seeds: hand-built files (a tiny llama model that llama.cpp loads, every value type, a minimal and a tensorless
file) and, from each real test GGUF, its first 4 and 32 KB and its metadata (arrays cut to 64 elements) with
tiny tensors. Each input stacks 1-4 mutations (integer fields set to edge values, bit flips, byte edits,
truncation, deletion, insertion, duplication) and goes through the daemon's path: the structure check, then
the estimate's facts. Properties: accepted or CorruptModelError, never another exception ("crash"); within
--time-bound seconds ("hang", timed again without the tracer); an accepted file reads the same to an
independent parser ("mismatch"). Coverage guidance: line arcs inside gguf_check.py and footprint.py, traced
with sys.settrace; an input that reaches a new arc joins the corpus.

Then two samples of accepted mutants: the facts against GGUFReader's (the reader the daemon used to run),
and loading by llama.cpp in a subprocess (load, then one token) - a native crash there is a finding (it
would kill only a worker), with the exit signal and the failed assertion recorded. (Before the check refused
repeated vocabulary tokens, 3 of seed 1's 50 loads died of SIGABRT on llama-vocab.cpp's
GGML_ASSERT(id_to_token.size() == token_to_id.size()).)

Rerun:  nice -n 10 .venv/bin/python benchmarks/fuzz_gguf.py [--inputs 100000] [--seed 1] [--load-sample 50]
Writes: benchmarks/results/fuzz_gguf.json and benchmarks/results/fuzz_gguf.md
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_io import write_results

from swarm_edge.config import DEFAULT_CONFIG, Settings
from swarm_edge.registry import load_registry

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the seeds, mutators and checks live with the fuzz test: tests.workers.test_gguf_fuzz

REAL_MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b")
LOAD_SCRIPT = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=64, verbose=sys.argv[2] == "verbose")
print("LOADED", flush=True)
llm("hello", max_tokens=1)
print("RAN", flush=True)
"""


class Coverage:
    """Line arcs (previous line, line) run inside the checked modules, per input and in all."""

    def __init__(self, files: set[str]) -> None:
        self.files, self.seen, self.current = files, set(), set()

    def _global(self, frame, event, arg):
        if frame.f_code.co_filename not in self.files:
            return None
        last = [frame.f_code.co_firstlineno]

        def local(frame, event, arg):
            if event == "line":
                self.current.add((frame.f_code.co_filename, last[0], frame.f_lineno))
                last[0] = frame.f_lineno
            return local
        return local

    def run(self, data: bytes) -> tuple[tuple[str, str, float], bool]:
        """run_one under the tracer; also whether the input reached an arc never seen before."""
        from tests.workers.test_gguf_fuzz import run_one

        self.current = set()
        sys.settrace(self._global)
        try:
            result = run_one(data)
        finally:
            sys.settrace(None)
        new = not self.current <= self.seen
        self.seen |= self.current
        return result, new


def reason(detail: str) -> str:
    """A refusal message without the file name, numbers, keys and names: what kind of refusal it was."""
    text = detail.split(": not a valid GGUF file: ", 1)[-1].split(" (at byte")[0]
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r"\b\w+(\.\w+)+\b", "KEY", text)
    text = re.sub(r"tensor \S+", "tensor T", text)
    return re.sub(r"(?<![\w-])-?\d+(,\d{3})*", "N", text)[:90]  # not the 8 of UTF-8 or the 32 of u32


def campaign(seeds: list, n: int, rng: random.Random, time_bound: float) -> tuple[dict, dict[str, list[bytes]]]:
    """Mutate and check n inputs; return the counts, findings, corpus growth and accepted mutants by family."""
    import swarm_edge.footprint
    import swarm_edge.workers.gguf_check
    from tests.workers.test_gguf_fuzz import Seed, mutate, run_one

    cov = Coverage({swarm_edge.workers.gguf_check.__file__, swarm_edge.footprint.__file__})
    for s in seeds:
        cov.run(s.data)
    corpus: list[tuple[str, Seed]] = []  # inputs that reached new arcs, by the family of the seed they came from
    counts: collections.Counter = collections.Counter()
    reasons: collections.Counter = collections.Counter()
    findings, accepted, slowest = [], collections.defaultdict(list), (0.0, b"")
    t0 = time.perf_counter()
    for i in range(n):
        if corpus and rng.random() < 0.5:
            family, parent = rng.choice(corpus)
        else:
            parent = seeds[i % len(seeds)]
            family = parent.name
        data = mutate(rng, parent)
        (outcome, detail, seconds), new = cov.run(data)
        if seconds > slowest[0]:
            slowest = (seconds, data)
        if seconds > time_bound:
            seconds = run_one(data)[2]  # again without the tracer's overhead
            if seconds > time_bound:
                outcome, detail = "hang", f"{seconds:.2f} s"
        counts[outcome] += 1
        if outcome == "refused":
            reasons[reason(detail)] += 1
        elif outcome == "accepted" and len(accepted[family]) < 400:
            accepted[family].append(data)
        if outcome in ("crash", "mismatch", "hang"):
            findings.append({"outcome": outcome, "seed": family, "detail": detail[:300], "input_hex": data[:256].hex()})
        if new and len(corpus) < 5000:
            corpus.append((family, Seed(family, data, parent.fields, parent.header_end)))
        if (i + 1) % 10000 == 0:
            print(f"{i + 1:,} inputs, {dict(counts)}, {len(cov.seen)} arcs, corpus {len(corpus)}, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    untraced = run_one(slowest[1])[2]
    return {"inputs": n, "counts": dict(counts), "reasons": reasons.most_common(25), "findings": findings,
            "arcs": len(cov.seen), "corpus": len(corpus), "elapsed_s": round(time.perf_counter() - t0, 1),
            "max_s_traced": round(slowest[0], 4), "max_s_untraced": round(untraced, 4)}, accepted


def reader_differential(accepted: dict[str, list[bytes]], rng: random.Random, k: int) -> dict:
    """On up to k accepted mutants: do our facts equal those GGUFReader gives (where it reads the file)?"""
    from swarm_edge.footprint import gguf_facts
    from tests.test_footprint import reader_facts

    pool = [(family, d) for family, ds in accepted.items() for d in ds if len(d) < 1 << 20]
    out = collections.Counter()
    diffs = []
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "m.gguf"
        for family, data in rng.sample(pool, min(k, len(pool))):
            p.write_bytes(data)
            ours = gguf_facts(p)
            try:
                theirs = reader_facts(p)
            except Exception as exc:  # GGUFReader refuses (or chokes on) some files we accept
                out[f"GGUFReader raised {type(exc).__name__} (seed {family})"] += 1
                continue
            if ours == theirs:
                out["equal"] += 1
            else:
                out["different"] += 1
                diffs.append({k2: (ours[k2], theirs.get(k2)) for k2 in ours if ours[k2] != theirs.get(k2)})
    return {"compared": sum(out.values()), "outcomes": dict(out), "differences": diffs[:10]}


def load_sample(accepted: dict[str, list[bytes]], rng: random.Random, k: int, timeout: float,
                keep_dir: Path) -> dict:
    """Load up to k accepted mutants with llama.cpp, each in its own process; most from the loadable seed.

    A mutant that kills its process is kept in keep_dir, and loaded again with llama.cpp's log on to name
    the failed assertion."""
    from swarm_edge.workers.gguf_check import check_gguf

    loadable = accepted.get("tiny-llama", [])
    others = [d for fam, ds in accepted.items() if fam != "tiny-llama" for d in ds]
    picks = rng.sample(loadable, min(len(loadable), k * 4 // 5))
    picks += rng.sample(others, min(len(others), k - len(picks)))
    out, findings = collections.Counter(), []
    with tempfile.TemporaryDirectory() as tmp:
        for i, data in enumerate(picks):
            p = Path(tmp) / f"mutant{i}.gguf"
            p.write_bytes(data)
            check_gguf(p)  # the real path (open, mmap) accepts it too
            status, tail = _load(p, timeout)
            out[status] += 1
            if status.startswith(("native crash", "timeout")):
                keep_dir.mkdir(parents=True, exist_ok=True)
                kept = keep_dir / f"crash{len(findings)}.gguf"
                kept.write_bytes(data)
                log = _load(p, timeout, verbose=True)[1]
                why = [line for line in log.splitlines() if "GGML_ASSERT" in line or "error" in line.lower()]
                findings.append({"status": status, "why": why[:3], "file": str(kept), "size": len(data)})
    return {"sampled": len(picks), "outcomes": dict(out), "findings": findings}


def _load(path: Path, timeout: float, verbose: bool = False) -> tuple[str, str]:
    def limits():  # a mutant must not take the shared machine's memory with it
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    try:
        r = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(path), "verbose" if verbose else "quiet"],
                           capture_output=True, text=True, timeout=timeout, preexec_fn=limits)
    except subprocess.TimeoutExpired:
        return "timeout", ""
    tail = r.stderr if verbose else r.stderr[-400:]
    if r.returncode < 0:
        return f"native crash: {signal.Signals(-r.returncode).name}", tail
    if r.returncode == 0:
        return "loaded and ran a token", ""
    if "LOADED" in r.stdout:
        return "loaded; generation raised", tail.strip().splitlines()[-1] if tail.strip() else ""
    return "llama.cpp refused (Python exception)", tail.strip().splitlines()[-1] if tail.strip() else ""


def real_files(home: Path | None) -> list[Path]:
    """The real test GGUFs that are here (the test cache first), never downloading."""
    from swarm_edge.errors import ModelFileError
    from swarm_edge.sources import ensure_model

    default = REPO / ".cache" / "test-home"
    home = home or Path(os.environ.get("SWARM_EDGE_TEST_HOME", default))
    settings = Settings.load(home=home if home.exists() else None, config=DEFAULT_CONFIG)
    registry = load_registry(DEFAULT_CONFIG)
    out = []
    for mid in REAL_MODELS:
        try:
            out.append(ensure_model(settings, registry.get(mid), registry.base_dir, fetch=False)["model"])
        except ModelFileError as exc:
            print(f"skip {mid}: {exc}", file=sys.stderr)
    return out


def table(r: dict) -> list[str]:
    c, L, D = r["campaign"]["counts"], r["llama_cpp"], r["reader"]
    lines = ["# GGUF structure check: fuzz campaign", "", f"`{r['command']}` (seed {r['seed']}, "
             f"{r['campaign']['elapsed_s']} s for the check campaign)", "",
             "| inputs | accepted | refused | crashes | mismatches | hangs | max s/input (traced / untraced) |",
             "|---:|---:|---:|---:|---:|---:|---:|",
             f"| {r['campaign']['inputs']:,} | {c.get('accepted', 0):,} | {c.get('refused', 0):,} | "
             f"{c.get('crash', 0)} | {c.get('mismatch', 0)} | {c.get('hang', 0)} | "
             f"{r['campaign']['max_s_traced']} / {r['campaign']['max_s_untraced']} |", "",
             f"Coverage: {r['campaign']['arcs']} line arcs in gguf_check.py + footprint.py; corpus grew by "
             f"{r['campaign']['corpus']} inputs. Seeds: {', '.join(r['seeds'])}.", "",
             f"Facts vs GGUFReader on {D['compared']} accepted mutants: {D['outcomes']}", "",
             f"llama.cpp loads of {L['sampled']} accepted mutants (subprocess, n_ctx 64, one token):", "",
             "| outcome | count |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(L["outcomes"].items())]
    lines += ["", "Native crashes and timeouts (each would have killed one worker, not the daemon):", ""]
    lines += [f"- {f['status']}: `{'; '.join(f['why']) or 'no log line'}` ({f['file']})" for f in L["findings"]] \
        or ["- none"]
    lines += ["", "Most common refusals:", "", "| reason | count |", "|---|---:|"]
    lines += [f"| {why} | {n:,} |" for why, n in r["campaign"]["reasons"][:15]]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--time-bound", type=float, default=1.0, help="seconds per input before it counts as a hang")
    ap.add_argument("--load-sample", type=int, default=50, help="accepted mutants to load with llama.cpp")
    ap.add_argument("--load-timeout", type=float, default=120.0)
    ap.add_argument("--reader-sample", type=int, default=300, help="accepted mutants to compare with GGUFReader")
    ap.add_argument("--home", type=Path, default=None, help="SWARM_EDGE_HOME holding the real test GGUFs")
    ap.add_argument("--keep-dir", type=Path, default=Path(tempfile.gettempdir()) / "fuzz_gguf_findings",
                    help="where mutants that crash llama.cpp are kept")
    args = ap.parse_args(argv)
    from tests.workers.test_gguf_fuzz import real_seeds, synthetic_seeds

    rng = random.Random(args.seed)
    seeds = synthetic_seeds() + [s for p in real_files(args.home) for s in real_seeds(p)]
    result, accepted = campaign(seeds, args.inputs, rng, args.time_bound)
    report = {"command": " ".join(["benchmarks/fuzz_gguf.py", *(argv if argv is not None else sys.argv[1:])]),
              "seed": args.seed, "seeds": [s.name for s in seeds], "campaign": result,
              "reader": reader_differential(accepted, rng, args.reader_sample),
              "llama_cpp": load_sample(accepted, rng, args.load_sample, args.load_timeout, args.keep_dir)}
    write_results("fuzz_gguf", report, table(report))
    c = result["counts"]
    return 1 if c.get("crash") or c.get("mismatch") or c.get("hang") else 0


if __name__ == "__main__":
    sys.exit(main())
