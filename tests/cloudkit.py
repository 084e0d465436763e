"""Stand-in clouds for the fallback tests.

- `Misbehaving`: a real HTTP server on loopback that speaks the OpenAI streaming protocol when asked to
  (`echo`: it streams the last user message back) and otherwise misbehaves on purpose: 500s, 429 with
  Retry-After, never answering, trickling keep-alive bytes forever, a 401 whose body quotes the key. It
  records every request (body, headers, arrival time).
- `StandIn`: llama-cpp-python's own OpenAI-compatible server (`python -m llama_cpp.server`) on loopback,
  serving a real GGUF, with an API key (given through its environment, never its argv).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2


class Misbehaving:
    """A loopback HTTP server whose behaviour is `mode` (see the module docstring)."""

    def __init__(self, mode: str = "echo", retry_after: str = "1") -> None:
        self.mode, self.retry_after = mode, retry_after
        self.requests: list[dict] = []
        self.closing = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                outer.requests.append({"path": self.path, "body": body, "headers": dict(self.headers),
                                       "t": time.monotonic()})
                outer.handle(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def bodies(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests]

    def handle(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        mode = self.mode
        if mode.endswith("-once"):  # misbehave for the first request, then answer
            mode = mode[:-5] if len(self.requests) == 1 else "echo"
        if mode == "hang":
            self.closing.wait(60)
            return
        if mode in ("500", "429", "401-leak", "400"):
            status = int(mode.split("-")[0])
            text = {"error": {"message": f"stand-in says {status}"}}
            if mode == "401-leak":  # a hostile server quoting our credentials back at us
                text["error"]["message"] = f"bad key: {h.headers.get('Authorization')}"
            data = json.dumps(text).encode()
            h.send_response(status)
            if status == 429:
                h.send_header("Retry-After", self.retry_after)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        text = next((m["content"] for m in reversed(json.loads(body)["messages"]) if m["role"] == "user"), "")
        if mode in ("json", "json-error", "json-empty"):  # a proxy that ignores `stream`: one JSON completion
            obj = {"id": "x", "object": "chat.completion", "model": "echo",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text if mode == "json"
                                                        else None}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}
            data = json.dumps({"error": {"message": "stand-in error in a 200"}} if mode == "json-error" else obj)
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data.encode())))
            h.end_headers()
            h.wfile.write(data.encode())
            return
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()
        if mode == "sse-empty":  # a well-formed stream that carries no text at all
            h.wfile.write(b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n'
                          b"data: [DONE]\n\n")
            return
        if mode == "trickle":  # a byte now and then, never an answer: only the total deadline ends this
            while not self.closing.wait(0.2):
                try:
                    h.wfile.write(b": still thinking\n")
                    h.wfile.flush()
                except OSError:
                    return
            return
        pieces = [text[i:i + 7] for i in range(0, len(text), 7)] or [""]

        def event(delta: dict, finish=None) -> bytes:
            return b"data: " + json.dumps({"id": "x", "object": "chat.completion.chunk", "model": "echo",
                                           "choices": [{"index": 0, "delta": delta,
                                                        "finish_reason": finish}]}).encode() + b"\n\n"
        h.wfile.write(event({"role": "assistant"}))
        for p in pieces:
            h.wfile.write(event({"content": p}))
            h.wfile.flush()
        h.wfile.write(event({}, "stop") + b"data: [DONE]\n\n")

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandIn:
    """`python -m llama_cpp.server` on loopback serving `model_path`; the key goes in through its env."""

    def __init__(self, model_path: Path, log: Path, *, key: str | None = None, n_ctx: int = 2048,
                 alias: str = "stand-in") -> None:
        self.port = free_port()
        self.key, self.alias = key, alias
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_EDGE_")}
        if key:
            env["API_KEY"] = key  # llama_cpp.server reads its settings from the environment too
        self._log = open(log, "wb")  # a pipe nobody reads fills up and blocks the server
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--model_alias", alias,
             "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(n_ctx), "--n_threads", "2",
             "--n_threads_batch", "2"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait(self, timeout: float = 120.0) -> StandIn:
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"llama_cpp.server exited {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx2.get(f"{self.url}/models", headers=headers, timeout=2).status_code == 200:
                    return self
            except httpx2.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"llama_cpp.server did not answer within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def run(coro):
    return asyncio.run(coro)


async def collect(client, messages, **kw):
    """(text, CloudResult) of one stream_chat call."""
    from swarm_edge.cloud import CloudResult

    res = CloudResult(client.config.model)
    parts = [t async for t in client.stream_chat(messages, result=res, **{"reason": "test", **kw})]
    return "".join(parts), res
