"""The direct token path (workers/direct.py) on real daemons, real models, real sockets: the worker writes the
tokens to the client itself, and the client cannot tell: the same events as relayed (SWARM_EDGE_DIRECT=off) on
both API families, keep-alive after it, a client that hangs up stops the model, a slow reader gets every byte,
and a bad switch value stops serve with a clear message."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import psutil
import pytest

from tests.api.conftest import SWARM_EDGE, private_root
from tests.api.test_hardening import LONG, _settled

pytestmark = pytest.mark.real_model

CHAT, TEXT, OLLAMA = "/v1/chat/completions", "/v1/completions", "/api/chat"
MESSAGES = [{"role": "user", "content": "Name five colours, one per line."}]


def _stream(d, path: str, body: dict) -> list[dict]:
    """Every event of a streamed answer (SSE data or NDJSON lines), parsed."""
    out = []
    with d.http.stream("POST", path, json=body) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            line = line.removeprefix("data: ")
            if line and line != "[DONE]":
                out.append(json.loads(line))
    return out


def _tokens(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        if "message" in e and not e.get("done"):
            out.append(e["message"]["content"])
        for c in e.get("choices") or []:
            piece = c.get("delta", {}).get("content") if "delta" in c else c.get("text")
            if piece and not c.get("finish_reason"):
                out.append(piece)
    return out


def _ends(events: list[dict]) -> list:
    """What closes a stream: finish reasons, usage, Ollama's done line (its counts), without times and ids."""
    out = []
    for e in events:
        if e.get("done"):
            out.append((e["done_reason"], e["eval_count"], e["prompt_eval_count"]))
        out += [c["finish_reason"] for c in e.get("choices") or [] if c.get("finish_reason")]
        if e.get("usage"):
            out.append(e["usage"])
    return out


def _counter(d, name: str) -> int:
    for line in d.http.get("/metrics").text.splitlines():
        if line.startswith(f"swarm_edge_{name} "):
            return int(float(line.split()[1]))
    raise AssertionError(f"no {name} in /metrics")


def test_direct_and_relayed_streams_agree(make_daemon):
    direct, relayed = make_daemon(), make_daemon(env={"SWARM_EDGE_DIRECT": "off"})
    asks = [
        (CHAT, {"model": "smollm2-135m", "messages": MESSAGES, "max_tokens": 24, "stream": True,
                "cache_prompt": False, "stream_options": {"include_usage": True}}),
        (TEXT, {"model": "smollm2-135m", "prompt": "The colours of the rainbow are", "max_tokens": 16,
                "stream": True, "cache_prompt": False}),
        (OLLAMA, {"model": "smollm2-135m", "messages": MESSAGES, "stream": True, "cache_prompt": False,
                  "options": {"num_predict": 16}}),
    ]
    for path, body in asks:
        a, b = _stream(direct, path, body), _stream(relayed, path, body)
        assert _tokens(a) and _tokens(a) == _tokens(b), (path, _tokens(a), _tokens(b))
        assert len(a) == len(b) and _ends(a) == _ends(b), (path, a[-2:], b[-2:])
        trace = next(e["swarm"] for e in a if "swarm" in e)
        assert trace["tokens"] == len(_tokens(a)) and trace["timings"]["ttft_s"] > 0, trace
        if path == CHAT:  # OpenAI's role chunk first, written by the worker with the first token
            assert a[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}, a[0]
    assert _counter(direct, "direct_streams_total") == len(asks)
    assert _counter(relayed, "direct_streams_total") == 0


def _read_response(f) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response with a chunked body from a socket file: (head, body)."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += f.readline()
    assert b"transfer-encoding: chunked" in head.lower(), head
    body = b""
    while True:
        size = int(f.readline().strip(), 16)
        data = f.read(size + 2)
        assert data.endswith(b"\r\n"), data[-10:]
        if size == 0:
            return head, body
        body += data[:-2]


def _post(s: socket.socket, body: dict, path: str = CHAT) -> None:
    data = json.dumps(body).encode()
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(data)}\r\n\r\n".encode() + data)


def test_the_connection_stays_usable_after_a_direct_stream(make_daemon):
    d = make_daemon()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(d.socket))
    f = s.makefile("rb")
    try:
        for n in (6, 4):  # two streamed answers, then a whole one, on one keep-alive connection
            _post(s, {"model": "smollm2-135m", "messages": MESSAGES, "max_tokens": n, "stream": True})
            head, body = _read_response(f)
            assert head.startswith(b"HTTP/1.1 200"), head
            events = [json.loads(x.removeprefix(b"data: ")) for x in body.split(b"\n\n") if x and b"[DONE]" not in x]
            assert len(_tokens(events)) == n and body.endswith(b"data: [DONE]\n\n"), body[-200:]
        _post(s, {"model": "smollm2-135m", "messages": MESSAGES, "max_tokens": 3})
        line = f.readline()
        assert line.startswith(b"HTTP/1.1 200"), line
    finally:
        f.close()
        s.close()
    assert _counter(d, "direct_streams_total") == 2


def _worker(d) -> psutil.Process:
    pid = next(r["pid"] for r in d.status()["residents"] if r["model"] == "smollm2-135m")
    return psutil.Process(pid)


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def test_a_client_that_hangs_up_stops_the_generation(make_daemon):
    d = make_daemon()
    long = {"model": "smollm2-135m", "messages": [{"role": "user", "content": LONG}], "max_tokens": 2000,
            "stream": True}
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(d.socket))
    _post(s, long)
    got = b""
    while got.count(b"data: ") < 3:  # the head and a few tokens, written by the worker
        got += s.recv(4096)
    worker = _worker(d)
    s.close()
    _settled(d)  # the model is free again: the worker saw EPIPE (or the daemon the hang-up) and stopped
    before = _cpu(worker)
    time.sleep(1.0)
    assert _cpu(worker) - before < 0.2, "the worker still computes for a client that is gone"
    r = d.http.post(CHAT, json={"model": "smollm2-135m", "messages": MESSAGES, "max_tokens": 4})
    assert r.status_code == 200, r.text
    assert _worker(d).pid == worker.pid and d.status()["stats"]["loads"] == 1  # no worker was killed for it


def test_a_slow_reader_gets_every_byte(make_daemon):
    """Nobody reads while 400 tokens are written (far more than the socket buffers hold): the worker keeps the
    rest and hands it back, the model is free at its own pace, and the client then reads a whole, valid stream."""
    d = make_daemon("--send-timeout", "120")  # the reader below starts late on purpose: not cut off for that
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(str(d.socket))
    try:
        _post(s, {"model": "smollm2-135m", "messages": [{"role": "user", "content": LONG}], "max_tokens": 400,
                  "stream": True, "stream_options": {"include_usage": True}})
        deadline = time.monotonic() + 240
        while not any(r["in_use"] for r in d.status()["residents"]):  # its generation starts
            assert time.monotonic() < deadline
            time.sleep(0.05)
        while any(r["in_use"] for r in d.status()["residents"]):  # and ends (the model is free) while the
            assert time.monotonic() < deadline                      # client has read nothing; the response
            time.sleep(0.05)                                        # itself waits for the reader
        assert d.status()["streams_open"] == 1
        f = s.makefile("rb")
        head, body = _read_response(f)
        f.close()
    finally:
        s.close()
    events = [json.loads(x.removeprefix(b"data: ")) for x in body.split(b"\n\n") if x and b"[DONE]" not in x]
    assert len(_tokens(events)) == 400 and events[-1]["usage"]["completion_tokens"] == 400
    assert sum(len(t.encode()) for t in _tokens(events)) > 300  # a real answer, not empty pieces
    assert len(body) > 32 * 1024  # more than the kernel could hold: the worker's leftovers came back
    assert _counter(d, "direct_streams_total") == 1


def test_a_bad_switch_stops_serve_with_a_clear_message(tmp_path):
    r = subprocess.run([SWARM_EDGE, "serve", "--socket", str(private_root() / "s.sock")], capture_output=True,
                       text=True,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SWARM_EDGE_HOME": str(tmp_path),
                            "SWARM_EDGE_DIRECT": "maybe"}, timeout=60)
    assert r.returncode != 0 and "SWARM_EDGE_DIRECT='maybe': expected on or off" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
