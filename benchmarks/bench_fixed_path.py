"""The daemon's fixed share of a streamed request's time to first token, two revisions side by side in one run.

bench_daemon compares the daemon with raw llama-cpp-python; the model call's own run-to-run noise (several ms
here) hides sub-millisecond changes of the daemon. This measures only the path around the model, with the
system's monotonic clock, which every process shares:

    C0 the client sends the request        -> W1 the worker starts the model call     (HTTP, routing, lease, order)
    W2 the model gives its first token     -> W4 the worker writes it to the client  (the hand-over, the framing)
    W4                                     -> C1 the client has it                     (the kernel, the client)

W1, W2 and W4 are timestamps written by an instrumented copy of each revision's worker code (two lines inserted
into gguf.py and one into direct.py of a `git archive` of the revision, in a temporary directory; the repository is
not touched). Each revision serves the same short prompt N times on a fresh daemon (smollm2-135m, direct path,
2 threads); the revisions alternate, medians per segment. Benchmark only: nothing here is in the daemon.

    .venv/bin/python benchmarks/bench_fixed_path.py [--base REV] [--head REV] [--requests N] [--rounds K]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_daemon import _light_events  # noqa: E402
from results_io import write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SWARM_EDGE = Path(sys.executable).parent / "swarm-edge"
MARK = "__import__('swarm_edge.workers._mark', fromlist=['m']).m"
MARKER = '''import os, time
_fd = None
def m(label):
    global _fd
    if _fd is None:
        _fd = os.open(os.environ["BENCH_FIXED_MARKS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(_fd, f"{label} {time.monotonic_ns()}\\n".encode())
'''
# (file, the line the mark goes after, the mark's label, extra indent): the same anchors in every revision since the
# direct path exists; a revision without one is refused
ANCHORS = [("swarm_edge/workers/gguf.py", "        t_first = t_last = None\n", "W1", ""),
           ("swarm_edge/workers/gguf.py", "                    if t_first is None:\n", "W2", "    "),
           ("swarm_edge/workers/direct.py", "            self.t_first = time.perf_counter()\n", "W4", "")]
SEGMENTS = [("C0", "W1", "client to the model call"), ("W2", "W4", "first token to its write"),
            ("W4", "C1", "write to the client"), ("C0", "C1", "client TTFT (model included)")]


def archive(rev: str, into: Path) -> Path:
    """`rev`'s package (and models.yaml, which its default config points to), unchanged, in `into`."""
    into.mkdir(parents=True)
    tar = subprocess.run(["git", "-C", str(REPO), "archive", rev, "swarm_edge", "models.yaml"], check=True,
                         capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=tar, check=True)
    return into


def build(rev: str, into: Path) -> Path:
    """An instrumented copy of `rev`'s package."""
    archive(rev, into)
    (into / "swarm_edge/workers/_mark.py").write_text(MARKER)
    for rel, anchor, label, indent in ANCHORS:
        path = into / rel
        text = path.read_text()
        if text.count(anchor) != 1:
            raise SystemExit(f"{rev}: {rel} has not exactly one line {anchor.strip()!r} to mark")
        path.write_text(text.replace(anchor, anchor + anchor[:len(anchor) - len(anchor.lstrip())] + indent +
                                     f"{MARK}({label!r})\n", 1))
    return into


@contextlib.contextmanager
def daemon_of(copy: Path, **env: str) -> Iterator[Path]:
    """A fresh daemon from `copy` (direct path, 2 threads, `env` added), its socket; stopped on leaving."""
    run = Path(tempfile.mkdtemp(prefix="rev-"))
    run.chmod(0o700)
    sock = run / "s.sock"
    full = {**os.environ, "PYTHONPATH": str(copy), "SWARM_EDGE_THREADS": "2", "SWARM_EDGE_DIRECT": "on", **env}
    full.pop("SWARM_EDGE_SOCKET", None)
    # cwd: not the repository, whose package a `python -c` child (the forkserver) would import before PYTHONPATH's
    proc = subprocess.Popen([SWARM_EDGE, "serve", "--offline", "--socket", str(sock)], env=full, cwd=run,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon of {copy} did not start: {proc.stderr.read().decode()[-1500:]}")
            time.sleep(0.05)
        yield sock
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(run, ignore_errors=True)


def serve(copy: Path, marks: Path, n: int, model: str) -> list[dict[str, int]]:
    """A fresh daemon from `copy`; n requests after two to load and warm; each request's marks."""
    with daemon_of(copy, BENCH_FIXED_MARKS=str(marks)) as sock:
        for _ in range(2):
            request(sock, model, {})
        marks.write_text("")
        out = []
        for _ in range(n):
            got: dict[str, int] = {}
            request(sock, model, got)
            out.append(got)
        for line in marks.read_text().split("\n"):  # the worker's marks, in request order
            if line:
                label, t = line.split()
                next(r for r in out if label not in r)[label] = int(t)
        return out


def request(sock: Path, model: str, marks: dict[str, int]) -> None:
    """One streamed request by bench_daemon's bare-socket client; C1 when the first token's event is read."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4,
                       "temperature": 0.0, "stream": True}).encode()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(120)
        s.connect(str(sock))
        marks["C0"] = time.monotonic_ns()
        for event in _light_events(s, body):
            if "C1" not in marks and any(c.get("delta", {}).get("content") for c in event.get("choices", ())):
                marks["C1"] = time.monotonic_ns()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="4d08bb8", help="the revision to compare with (default: before session 13)")
    ap.add_argument("--head", default="HEAD")
    ap.add_argument("--requests", type=int, default=40, help="requests per daemon")
    ap.add_argument("--rounds", type=int, default=2, help="fresh daemons per revision, alternating")
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    for name in ("base", "head"):  # a commit, not a name that moves ("HEAD" in a results file says nothing later)
        setattr(args, name, subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", getattr(args, name)],
                                           check=True, capture_output=True, text=True).stdout.strip())
    work = Path(tempfile.mkdtemp(prefix="bench-fixed-"))
    try:
        revs = {rev: build(rev, work / f"rev{i}") for i, rev in enumerate((args.base, args.head))}
        got: dict[str, list[dict[str, int]]] = {rev: [] for rev in revs}
        for _ in range(args.rounds):
            for rev, copy in revs.items():
                print(f"{rev}: {args.requests} requests", file=sys.stderr)
                got[rev] += serve(copy, work / "marks", args.requests, args.model)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = {rev: {f"{a}-{b}": round(statistics.median((r[b] - r[a]) / 1e6 for r in rows), 3)
                     for a, b, _ in SEGMENTS} for rev, rows in got.items()}
    lines = [f"# The daemon's fixed share of TTFT: {args.base} vs {args.head}", "",
             f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {args.model}, direct path, 2 threads, {args.rounds} fresh daemons "
             f"x {args.requests} requests per revision (alternating), medians in ms. Marks: the system's monotonic "
             "clock in the client and in an instrumented copy of each revision's worker.",
             f"Rerun: `.venv/bin/python benchmarks/bench_fixed_path.py --base {args.base} --head {args.head}`", "",
             f"| segment | {args.base} | {args.head} | change |", "|---|---:|---:|---:|"]
    for a, b, what in SEGMENTS:
        x, y = medians[args.base][f"{a}-{b}"], medians[args.head][f"{a}-{b}"]
        lines.append(f"| {what} ({a} -> {b}) | {x:.3f} | {y:.3f} | {y - x:+.3f} |")
    fixed = {rev: round(sum(m[f"{a}-{b}"] for a, b, _ in SEGMENTS[:3]), 3) for rev, m in medians.items()}
    lines.append(f"| **fixed share** (the first three) | **{fixed[args.base]:.3f}** | **{fixed[args.head]:.3f}** | "
                 f"**{fixed[args.head] - fixed[args.base]:+.3f}** |")
    write_results("fixed_path", {"base": args.base, "head": args.head, "model": args.model, "medians": medians,
                                 "fixed": fixed, "requests": got}, lines)


if __name__ == "__main__":
    main()
