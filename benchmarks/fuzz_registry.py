"""Fuzz campaign for models.yaml: mutated real and test registries through parse_registry.

The documents, mutators and the check live with the fuzz test (tests/test_registry_fuzz.py): the real
models.yaml (whole, and its models with two routes) and the tests' registries, mutated as data (keys
dropped, added or shared as anchors, values retyped, huge, unicode, nested) and as text (lines dropped,
doubled, swapped, re-indented; YAML tags, aliases, billion laughs, deep nesting, bad syntax). Property: each
document loads, or raises a ConfigError whose message names its line; any other exception ("crash"), a
ConfigError without a line ("no line") or more than --time-bound seconds ("slow") is a failure.

Rerun:  nice -n 10 .venv/bin/python benchmarks/fuzz_registry.py [--n 10000] [--seed 1]
Writes: benchmarks/results/fuzz_registry.json and benchmarks/results/fuzz_registry.md
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

from results_io import write_results

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the seeds, mutators and check live with the fuzz test: tests.test_registry_fuzz


def reason(message: str) -> str:
    """A refusal without file, line, key path, quoted values and numbers: what kind of refusal it was."""
    text = re.sub(r"^\S*?models\.yaml:\d+: (\S+: )?", "", message)
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    text = re.sub(r"\(got .*?\)$|\(and \d+ more problems?\)", "", text)
    return re.sub(r"(?<![\w-])-?\d+(,\d{3})*(\.\d+)?", "N", text).strip()[:90]


def table(r: dict) -> list[str]:
    c = r["counts"]
    lines = ["# models.yaml: fuzz campaign", "", f"`{r['command']}` (seed {r['seed']}, {r['elapsed_s']} s)", "",
             "| inputs | loaded | ConfigError with a line | ConfigError without a line | other exceptions | "
             f"slower than {r['time_bound_s']} s | max s/input |",
             "|---:|---:|---:|---:|---:|---:|---:|",
             f"| {r['inputs']:,} | {c['ok']:,} | {c['config_error']:,} | {c['no_line']} | {c['crash']} | "
             f"{c['slow']} | {r['max_s']} |", "",
             f"Seeds: {', '.join(r['seeds'])}.", "", "Most common refusals:", "", "| reason | count |", "|---|---:|"]
    lines += [f"| {why.replace('|', '/')} | {n:,} |" for why, n in r["reasons"][:20]]
    lines += ["", "Failures:", ""]
    lines += [f"- {f['outcome']} (from {f['seed']}): `{f['detail'].splitlines()[0][:150]}`" for f in r["failures"]] \
        or ["- none"]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="documents to check")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--time-bound", type=float, default=None, help="seconds per document before it counts as slow")
    args = ap.parse_args(argv)
    import tests.test_registry_fuzz as fuzz

    if args.time_bound is not None:
        fuzz.TIME_BOUND_S = args.time_bound
    reasons: collections.Counter = collections.Counter()

    def observe(outcome: str, detail: str) -> None:
        if outcome == "config_error":
            reasons[reason(detail)] += 1

    result = fuzz.run(args.n, args.seed, observe)
    report = {"command": "benchmarks/fuzz_registry.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "seed": args.seed, "seeds": [name for name, _, _ in fuzz.seeds()], "time_bound_s": fuzz.TIME_BOUND_S,
              **result, "reasons": reasons.most_common(40)}
    c = result["counts"]
    print(f"inputs {args.n:,}; ConfigErrors with a line {c['config_error']:,}; loaded {c['ok']:,}; other exceptions "
          f"{c['crash']}; ConfigErrors without a line {c['no_line']}; slow {c['slow']}; {result['elapsed_s']} s",
          file=sys.stderr)
    write_results("fuzz_registry", report, table(report))
    return 1 if c["crash"] or c["no_line"] or c["slow"] else 0


if __name__ == "__main__":
    sys.exit(main())
