"""Through the daemon vs raw llama-cpp-python: decode tok/s and time to first token, one run, same everything.

daemon  `swarm-edge serve` in its own process; a client streams /v1/chat/completions (SSE) over the Unix socket:
        by default a bare socket with HTTP and SSE read by hand (light_once, a new connection per request),
        with --client stdlib swarm-edge's own client (http.client, kept alive, what `swarm-edge ask` uses);
        the model runs in a worker process, which writes the tokens to the client's socket itself (the direct
        path, swarm_edge/workers/direct.py); times are taken where the client receives and parses each chunk
relay   the same, with SWARM_EDGE_DIRECT=off: every token passes through the daemon (before the direct path)
raw     llama_cpp.Llama in this process, create_chat_completion(stream=True)

Tokens are counted from the answer's `usage` (an event could carry several), chunks on the raw side (one per token).

Same GGUF, load options (n_ctx, n_batch, n_ubatch, threads, mmap, KV type: raw_llama), chat messages and sampling
(greedy, top_p 1.0) on both sides. Every rep
starts a fresh daemon and a fresh raw instance (one instance's memory layout can be a few percent faster
than another's), warms both with one request, then alternates them prompt by prompt, so both see the same
sequence of prompts (and the same prefix-cache hits). Added TTFT is the median of the per-prompt
differences daemon - raw. The three sides take turns in a rotating order, with a pause between two (SETTLE_S).

Rerun:  .venv/bin/python benchmarks/bench_daemon.py [--reps 4] [--max-tokens 96] [--models ID ...] [--client stdlib]
        [--control]  (a second raw instance in the rotation: the noise floor of the added-TTFT figures)
Writes: benchmarks/results/daemon.json and benchmarks/results/daemon.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_decode import time_stream
from results_io import fetched_models, write_results

from swarm_edge.api.client import DaemonClient
from swarm_edge.config import DEFAULT_CONFIG, Settings
from swarm_edge.registry import load_registry

PROMPTS = [
    "List twenty fruits, one per line, numbered.",
    "Write the numbers from one to forty in words, separated by commas.",
    "Name twenty countries in Europe, one per line.",
    "List twenty animals that live in the ocean, numbered.",
    "Write twenty English verbs in the past tense, one per line.",
    "List twenty colours, numbered, one per line.",
]
SWARM_EDGE = str(Path(sys.executable).with_name("swarm-edge"))
# Between two sides, a pause: llama.cpp's OpenMP threads spin for a while after a computation, and on 2 cores the
# previous side's spinning process (this one for raw, a worker for the daemon) slowed the next side's prompt by
# several ms; measured back to back, the worker's own model call looked 4 ms slower than raw, with the pause it is
# not (a user's client runs no llama.cpp threads)
SETTLE_S = 0.3
CLIENTS = {"light": "light (a bare Unix socket, HTTP and SSE read by hand: light_once)",
           "stdlib": "stdlib (swarm-edge's own DaemonClient, http.client)"}
# The fixed cost, measured where the model's own time is smallest and steadiest: the same short prompt again, a full
# prefix-cache hit on every side (the model evaluates one token, ~12 ms on smollm2), so what remains of the
# difference is the daemon's: HTTP, routing, the worker's pipe. Fresh prompts vary by +-5 ms a side on this machine.
CACHED_PROMPT, CACHED_ROUNDS = "Say hello.", 6


def raw_once(llm, prompt: str, max_tokens: int):
    stream = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                        temperature=0.0, top_p=1.0, stream=True)
    return time_stream(c["choices"][0].get("delta", {}).get("content") or "" for c in stream)


def daemon_once(client, model: str, prompt: str, max_tokens: int):
    """(TTFT, decode tok/s, tokens, the trace's ttft_s and model_ttft_s): tokens from `usage`, the rate over the
    time from the first content event to the last."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.0, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    return _measured(client.stream("/v1/chat/completions", body), t0)


def _measured(objs, t0: float):
    """daemon_once's figures from a stream's event objects, read as they arrive (t0: when the request went out)."""
    trace: dict = {}
    usage: dict = {}
    first = last = None
    for obj in objs:
        trace.update(obj.get("swarm", {}).get("timings", {}))
        usage.update(obj.get("usage") or {})
        if any(c.get("delta", {}).get("content") for c in obj.get("choices", [])):
            last = time.perf_counter()
            first = first or last
    n = usage.get("completion_tokens") or 0
    if first is None or last is None or n < 2 or last <= first:
        raise RuntimeError("the model produced fewer than two tokens; pick a longer-running prompt")
    return first - t0, (n - 1) / (last - first), n, trace.get("ttft_s"), trace.get("model_ttft_s")


def _events(sock: socket.socket, buf: bytes):
    """The SSE events' JSON objects of a chunked response whose head has been read (`buf`: bytes after it)."""
    sse = b""
    while True:
        while (eol := buf.find(b"\r\n")) >= 0 and len(buf) >= eol + 4 + int(buf[:eol], 16):
            size = int(buf[:eol], 16)
            if size == 0:
                return
            sse, buf = sse + buf[eol + 2:eol + 2 + size], buf[eol + 4 + size:]
            while (end := sse.find(b"\n\n")) >= 0:
                event, sse = sse[:end], sse[end + 2:]
                if event.startswith(b"data: {"):
                    obj = json.loads(event[6:])
                    if "error" in obj:
                        raise RuntimeError(f"the stream ended in an error: {obj['error']}")
                    yield obj
        data = sock.recv(65536)
        if not data:
            raise RuntimeError("the daemon closed the stream before its last chunk")
        buf += data


def light_once(path: Path, model: str, prompt: str, max_tokens: int):
    """daemon_once with the lightest client Python has: a Unix socket, the request's bytes written by hand, chunked
    coding and SSE read by hand. A general client's machinery is the client's cost, not the daemon's, and it runs
    on the 2 cores the model decodes on (GET /health took 0.86 ms through httpx, 0.49 ms from a bare socket)."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                       "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}).encode()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(300)
        sock.connect(str(path))
        t0 = time.perf_counter()
        return _measured(_light_events(sock, body), t0)


def _light_events(sock: socket.socket, body: bytes):
    """The request written by hand, the head checked, then the stream's event objects (_events)."""
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: swarm-edge\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536) or b"\r\n\r\n"
    head, _, buf = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") or b"chunked" not in head.lower():
        raise RuntimeError(f"unexpected response: {head[:200]!r}")
    yield from _events(sock, buf)


class Daemon:
    def __init__(self, root: Path, threads: int, direct: bool = True) -> None:
        self.socket = root / "run" / "s.sock"
        env = {**os.environ, "SWARM_EDGE_THREADS": str(threads), "SWARM_EDGE_DIRECT": "on" if direct else "off"}
        env.pop("SWARM_EDGE_SOCKET", None)
        self.proc = subprocess.Popen([SWARM_EDGE, "serve", "--offline", "--socket", str(self.socket)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.http = DaemonClient(self.socket, timeout=300)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if DaemonClient.find(self.socket) is not None:
                return
            time.sleep(0.05)
        raise RuntimeError(f"daemon did not start: {self.proc.stderr.read().decode()[-2000:]}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def one_round(sides: dict, k: int, prompt: str, max_tokens: int) -> tuple:
    """`prompt` on every side, starting with the k-th (the order rotates), a pause before each: (daemon, raw, relay)
    and, with the control, raw2."""
    names = list(sides)
    got = {}
    for name in names[k:] + names[:k]:
        fn, *args = sides[name]
        time.sleep(SETTLE_S)
        got[name] = fn(*args, prompt, max_tokens)
    return (got["daemon"], got["raw"], got["relay"]) + ((got["raw2"],) if "raw2" in got else ())


def ttft_split(rows: list) -> dict:
    """Where the added time goes: HTTP + client (client TTFT - daemon-side TTFT), daemon to worker and back
    (daemon-side - time inside the worker's model call), and the model call itself vs raw; medians, ms."""
    return {
        "http_and_client": statistics.median((p[0][0] - p[0][3]) * 1000 for p in rows),
        "daemon_to_worker": statistics.median((p[0][3] - p[0][4]) * 1000 for p in rows),
        "model_call_vs_raw": statistics.median((p[0][4] - p[1][0]) * 1000 for p in rows),
    }


def _per_rep(pairs: list, side: int) -> list[float]:
    """Per rep (each has len(PROMPTS) fresh prompts, fresh instances), the median TTFT of `side` minus raw's, ms."""
    n = len(PROMPTS)
    return [statistics.median((p[side][0] - p[1][0]) * 1000 for p in pairs[i:i + n]) for i in range(0, len(pairs), n)]


def raw_llama(Llama, spec, files, threads: int):
    """The raw side's instance, loaded as the worker loads it (workers/gguf.py): the same n_ctx, n_batch, n_ubatch,
    threads, mmap choice and KV-cache type. (Until 2026-12-01 this side used llama-cpp-python's default mmap=True
    where the worker reads the weights into memory: not the same thing on both sides.)"""
    from swarm_edge.workers.gguf import kv_options

    threads = spec.threads or threads  # a model's own thread count wins, as in backend_options
    return Llama(model_path=str(files["model"]), n_ctx=spec.n_ctx, n_batch=spec.n_batch,
                 n_ubatch=spec.n_ubatch or min(spec.n_batch, 512), n_threads=threads, n_threads_batch=threads,
                 use_mmap=spec.mmap, verbose=False, **kv_options({"kv_type": spec.kv_type}))


def bench_model(spec, files, threads: int, reps: int, max_tokens: int, client: str = "light",
                control: bool = False) -> dict:
    """`control`: a second raw instance takes its turn too (raw2); raw2 - raw is what two identical instances of
    the same model differ by, the noise floor of an added-TTFT figure on fresh prompts."""
    from llama_cpp import Llama

    pairs = []   # (daemon (ttft, tok/s, n, ...), raw (ttft, tok/s, n), relay (ttft, tok/s, n, ...)) per prompt
    cached = []  # the same, for CACHED_PROMPT asked again
    for rep in range(reps):
        roots = [Path(tempfile.mkdtemp(prefix="se-bench-")) for _ in range(2)]
        daemon, relay = Daemon(roots[0], threads), Daemon(roots[1], threads, direct=False)
        raw = raw_llama(Llama, spec, files, threads)
        raw2 = raw_llama(Llama, spec, files, threads) if control else None
        try:
            daemon_once(daemon.http, spec.id, "Say hello.", 8)   # loads the model in a worker
            daemon_once(relay.http, spec.id, "Say hello.", 8)
            raw_once(raw, "Say hello.", 8)
            if raw2 is not None:
                raw_once(raw2, "Say hello.", 8)
            if client == "light":  # stdlib: DaemonClient
                sides = {"daemon": (light_once, daemon.socket, spec.id), "raw": (raw_once, raw),
                         "relay": (light_once, relay.socket, spec.id)}
            else:
                sides = {"daemon": (daemon_once, daemon.http, spec.id), "raw": (raw_once, raw),
                         "relay": (daemon_once, relay.http, spec.id)}
            if raw2 is not None:
                sides["raw2"] = (raw_once, raw2)
            for i, prompt in enumerate(PROMPTS):
                pairs.append(one_round(sides, (i + rep) % len(sides), prompt, max_tokens))
            for j in range(CACHED_ROUNDS + 1):  # round 0 puts the prompt in every side's cache
                got = one_round(sides, (j + rep) % len(sides), CACHED_PROMPT, 8)
                if j:
                    cached.append(got)
        finally:
            raw.close()
            if raw2 is not None:
                raw2.close()
            daemon.stop()
            relay.stop()
            for root in roots:
                shutil.rmtree(root, ignore_errors=True)
    d_tok = statistics.median(p[0][1] for p in pairs)
    r_tok = statistics.median(p[1][1] for p in pairs)
    l_tok = statistics.median(p[2][1] for p in pairs)
    return {
        "model": spec.id, "client": client, "threads": threads, "n_ctx": spec.n_ctx, "n_batch": spec.n_batch,
        "reps": reps, "prompts": len(pairs),
        "daemon": {"tok_s": d_tok, "ttft_s": statistics.median(p[0][0] for p in pairs)},
        "raw": {"tok_s": r_tok, "ttft_s": statistics.median(p[1][0] for p in pairs)},
        "relay": {"tok_s": l_tok, "ttft_s": statistics.median(p[2][0] for p in pairs)},
        "decode_ratio": d_tok / r_tok,
        "relay_decode_ratio": l_tok / r_tok,
        "decode_ratio_per_prompt_median": statistics.median(p[0][1] / p[1][1] for p in pairs),
        "ttft_added_ms_median": statistics.median((p[0][0] - p[1][0]) * 1000 for p in pairs),
        "relay_ttft_added_ms_median": statistics.median((p[2][0] - p[1][0]) * 1000 for p in pairs),
        "ttft_split_ms_median": ttft_split(pairs),
        "cached_prompt": CACHED_PROMPT, "cached_pairs": len(cached),
        "cached_raw_ttft_ms": statistics.median(p[1][0] for p in cached) * 1000,
        "cached_ttft_added_ms_median": statistics.median((p[0][0] - p[1][0]) * 1000 for p in cached),
        "cached_relay_ttft_added_ms_median": statistics.median((p[2][0] - p[1][0]) * 1000 for p in cached),
        "cached_ttft_split_ms_median": ttft_split(cached),
        "same_token_counts": all(len({side[2] for side in p}) == 1 for p in pairs),  # raw2 too, with the control
        "control": control,
        **({"control_ttft_added_ms_median": statistics.median((p[3][0] - p[1][0]) * 1000 for p in pairs),
            "control_cached_ttft_added_ms_median": statistics.median((p[3][0] - p[1][0]) * 1000 for p in cached),
            "control_ttft_added_ms_per_rep": _per_rep(pairs, 3),
            "ttft_added_ms_per_rep": _per_rep(pairs, 0)} if control else {}),
        "pairs": pairs,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["smollm2-135m", "qwen2.5-coder-0.5b"])
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--control", action="store_true",
                    help="a second raw instance takes its turn too: what two identical instances differ by (the "
                         "noise floor of the added-TTFT figures)")
    ap.add_argument("--client", choices=["light", "stdlib"], default="light",
                    help="the HTTP client that reads the daemon's stream (light: a bare socket; see light_once)")
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    settings = Settings.load(threads=args.threads)
    registry = load_registry(DEFAULT_CONFIG)
    results = []
    for spec, files in fetched_models(settings, registry, args.models):
        print(f"benchmarking {spec.id} through the daemon vs raw ...", file=sys.stderr, flush=True)
        results.append(bench_model(spec, files, settings.threads, args.reps, args.max_tokens, args.client,
                                   args.control))
    if not results:
        print("no model is fetched: run `swarm-edge models fetch` first", file=sys.stderr)
        return 1
    meta = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine(),
            "python": platform.python_version(), "max_tokens": args.max_tokens, "client": args.client,
            "prompts": PROMPTS}
    lines = [
        "# Through the daemon (HTTP/SSE over the Unix socket, worker process) vs raw llama-cpp-python, one run",
        "", f"{meta['when']}, {args.reps} reps x {len(PROMPTS)} prompts, alternating per prompt, fresh daemon and "
        f"raw instance per rep, medians, {args.max_tokens} tokens max, same file/load options (raw_llama)/messages/"
        "sampling. Bars (issue 16): decode ratio >= 0.99 on smollm2-135m, added TTFT <= 2 ms. `daemon` is the direct "
        "path (the worker writes the tokens to the client), `relay` the same daemon with SWARM_EDGE_DIRECT=off. "
        f"Client: {CLIENTS[args.client]}.",
        f"Rerun: `{' '.join(['.venv/bin/python', 'benchmarks/bench_daemon.py', *argv])}`", "",
        "| model | threads | raw tok/s | daemon tok/s | daemon/raw | relay/raw | raw TTFT ms | daemon TTFT ms "
        "| added TTFT ms (median of pairs) | relay added TTFT ms | cached prompt: raw TTFT ms | added | relay added "
        "| same tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['model']} | {r['threads']} | {r['raw']['tok_s']:.1f} | {r['daemon']['tok_s']:.1f} | "
                     f"**{r['decode_ratio']:.3f}** | {r['relay_decode_ratio']:.3f} | {r['raw']['ttft_s'] * 1000:.1f} | "
                     f"{r['daemon']['ttft_s'] * 1000:.1f} | **{r['ttft_added_ms_median']:+.1f}** | "
                     f"{r['relay_ttft_added_ms_median']:+.1f} | {r['cached_raw_ttft_ms']:.1f} | "
                     f"**{r['cached_ttft_added_ms_median']:+.1f}** | {r['cached_relay_ttft_added_ms_median']:+.1f} | "
                     f"{r['same_token_counts']} |")
    lines += ["", "Where the added TTFT goes (medians; http: client TTFT - the daemon's own ttft_s; daemon to worker: "
              "that - the worker's model-call ttft; model call: that - raw TTFT):", "",
              "| model | prompts | http + client ms | daemon to worker ms | model call vs raw ms |",
              "|---|---|---|---|---|"]
    for r in results:
        for label, key in (("fresh", "ttft_split_ms_median"), ("cached", "cached_ttft_split_ms_median")):
            sp = r[key]
            lines.append(f"| {r['model']} | {label} | {sp['http_and_client']:+.2f} | {sp['daemon_to_worker']:+.2f} | "
                         f"{sp['model_call_vs_raw']:+.2f} |")
    if args.control:
        lines += ["", "The control (--control): a second raw instance, raw2, took its turn in the same rotation. "
                  "raw2 - raw is what two identical llama-cpp-python instances of the model differ by: the noise floor "
                  "of an added-TTFT figure. Per rep: the median over that rep's fresh prompts (fresh instances each).",
                  "", "| model | raw2 - raw, fresh ms | raw2 - raw, cached ms | daemon - raw per rep ms "
                  "| raw2 - raw per rep ms |", "|---|---|---|---|---|"]
        for r in results:
            lines.append(f"| {r['model']} | {r['control_ttft_added_ms_median']:+.1f} | "
                         f"{r['control_cached_ttft_added_ms_median']:+.1f} | "
                         f"{' '.join(f'{x:+.1f}' for x in r['ttft_added_ms_per_rep'])} | "
                         f"{' '.join(f'{x:+.1f}' for x in r['control_ttft_added_ms_per_rep'])} |")
    write_results("daemon", {"meta": meta, "results": results}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
