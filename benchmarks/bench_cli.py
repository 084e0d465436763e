"""`swarm-edge --help` wall time vs a bare typer hello-world's `--help`, one run, interleaved.

Both run as fresh processes with the same interpreter (the venv's); runs alternate so drift hits both
alike; medians. Also lists which heavy modules `--help` imported (it must import none of them).

Rerun:  .venv/bin/python benchmarks/bench_cli.py [--runs 21]
Writes: benchmarks/results/cli.json and benchmarks/results/cli.md
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_io import write_results

HELLO = '''import typer

app = typer.Typer()


@app.command()
def hello(name: str = "world") -> None:
    """Say hello."""
    print(f"hello {name}")


if __name__ == "__main__":
    app()
'''
HEAVY = ("llama_cpp", "onnxruntime", "numpy", "tokenizers", "huggingface_hub", "fastapi", "uvicorn", "starlette",
         "httpx2", "pydantic", "yaml", "psutil")


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=21)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        hello = Path(tmp) / "hello.py"
        hello.write_text(HELLO)
        ours_cmd = [str(Path(sys.executable).with_name("swarm-edge")), "--help"]
        hello_cmd = [sys.executable, str(hello), "--help"]
        for cmd in (ours_cmd, hello_cmd):  # warm the page cache and .pyc files
            wall(cmd)
        ours, bare = [], []
        for i in range(args.runs):
            pair = [(ours, ours_cmd), (bare, hello_cmd)]
            for bucket, cmd in (pair if i % 2 == 0 else pair[::-1]):
                bucket.append(wall(cmd))
    probe = ("import sys; sys.argv = ['swarm-edge', '--help']\nfrom swarm_edge.cli import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    heavy = out.strip().rsplit("HEAVY=", 1)[1]
    data = {"runs": args.runs, "ours_s": statistics.median(ours), "hello_s": statistics.median(bare),
            "ratio": statistics.median(ours) / statistics.median(bare), "heavy_imported": heavy.split(",") if heavy
            else [], "all_ours": ours, "all_hello": bare, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    lines = [
        "# `swarm-edge --help` vs a bare typer hello-world `--help`, one run",
        "", f"{data['when']}, {args.runs} interleaved runs each, medians, same interpreter. Bar: ratio <= 1.5.",
        "Rerun: `.venv/bin/python benchmarks/bench_cli.py`", "",
        "| swarm-edge --help ms | hello-world --help ms | ratio | heavy modules imported |",
        "|---|---|---|---|",
        f"| {data['ours_s'] * 1000:.0f} | {data['hello_s'] * 1000:.0f} | **{data['ratio']:.2f}** | "
        f"{', '.join(data['heavy_imported']) or 'none'} |",
    ]
    write_results("cli", data, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
