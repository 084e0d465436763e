"""Holes found by reading the daemon's code, each tried against a real daemon on a real socket: a client that
stops reading, a download that never ends, a request past its deadline."""

from __future__ import annotations

import concurrent.futures as cf
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.api.conftest import Daemon, client, private_root
from tests.conftest import registry_yaml

pytestmark = pytest.mark.real_model

CHAT = "/v1/chat/completions"
LONG = "Repeat the word hello 500 times."  # smollm2-135m answers it greedily with 900 tokens and more


def _raw_request(path, body: dict) -> socket.socket:
    """Send one HTTP request over the Unix socket and return the socket without reading the answer."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(str(path))
    data = json.dumps(body).encode()
    s.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return s


def _settled(d: Daemon, within: float = 10.0) -> None:
    """No stream open, no lease held (a lease is released by a task of its own: give it a moment)."""
    end = time.monotonic() + within
    while True:
        st = d.status()
        if st["streams_open"] == 0 and all(r["in_use"] == 0 for r in st["residents"]):
            return
        assert time.monotonic() < end, st
        time.sleep(0.1)


def test_a_client_that_stops_reading_holds_no_model(make_daemon):
    """A frozen app's stream (it never reads) must not hold the model: the next request answers at the model's
    pace, and the frozen connection is cut after --send-timeout."""
    d = make_daemon("--send-timeout", "3")
    long = {"model": "smollm2-135m", "stream": True, "max_tokens": 400,  # greedy: 400 tokens, never an early stop
            "messages": [{"role": "user", "content": LONG}]}
    frozen = _raw_request(d.socket, long)
    try:
        # its generation has started (the daemon starts asleep: the first load also starts the forkserver)
        for _ in range(600):
            if any(r["in_use"] and r["state"] == "ready" for r in d.status()["residents"]):
                break
            time.sleep(0.1)
        time.sleep(1.0)
        t0 = time.monotonic()
        # Before the fix this waited for as long as the frozen client did not read: forever. Now it waits at most
        # for the frozen request's generation (400 tokens; seconds on an idle machine), whatever the client does.
        r = d.http.post(CHAT, json={"model": "smollm2-135m", "max_tokens": 8,
                                    "messages": [{"role": "user", "content": "Say hi."}]}, timeout=240)
        assert r.status_code == 200, r.text
        print(f"\nthe second request waited {time.monotonic() - t0:.1f} s")
        for _ in range(200):  # the frozen connection is aborted once its buffers stay full for 3 s
            metrics = d.http.get("/metrics").text
            if "swarm_edge_stalled_connections_total 1" in metrics:
                break
            time.sleep(0.2)
        assert "swarm_edge_stalled_connections_total 1" in metrics
        _settled(d)
    finally:
        frozen.close()


def test_per_request_deadline_frees_the_model(make_daemon):
    d = make_daemon("--request-timeout", "4")
    body = {"model": "smollm2-135m", "max_tokens": 900, "messages": [{"role": "user", "content": LONG}]}
    # A load that outlasts its requester's deadline goes on (the next request finds the model loaded): on a busy
    # machine the first tries may end in 504 while the model loads; none of them may poison the model.
    warm = [d.http.post(CHAT, json={**body, "max_tokens": 1}).status_code for _ in range(3)]
    while warm[-1] != 200 and len(warm) < 15:
        warm.append(d.http.post(CHAT, json={**body, "max_tokens": 1}).status_code)
    assert set(warm) <= {200, 504} and warm[-1] == 200, warm
    assert d.status()["stats"]["loads"] == 1
    deadlines = 0 if 504 not in warm else warm.count(504)
    t0 = time.monotonic()
    r = d.http.post(CHAT, json=body)  # 900 tokens take longer than 4 s (15 s on an idle machine)
    assert r.status_code == 504 and r.json()["error"]["code"] == "request_timeout", r.text
    assert time.monotonic() - t0 < 20
    with d.http.stream("POST", CHAT, json={**body, "stream": True}) as s:
        lines = [line for line in s.iter_lines() if line.startswith("data: ")]
    assert s.status_code == 200 and "request_timeout" in lines[-1], lines[-3:]
    assert f"swarm_edge_request_deadlines_total {deadlines + 2}" in d.http.get("/metrics").text
    _settled(d)
    ok = d.http.post(CHAT, json={**body, "max_tokens": 4})
    assert ok.status_code == 200


class _StuckHub(BaseHTTPRequestHandler):
    """A Hugging Face endpoint on loopback whose downloads never finish until `release` is set."""

    release = threading.Event()

    def do_HEAD(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.send_header("ETag", '"abc"')
        self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
        self.end_headers()

    def do_GET(self):  # noqa: N802
        if "/resolve/" not in self.path:  # huggingface_hub's other questions (/api/agent-harnesses): not here
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"x")
        self.wfile.flush()
        _StuckHub.release.wait(120)

    def log_message(self, *args):
        pass


def test_a_stuck_download_starves_nothing_else(model_files, tmp_path):
    """Eight requests for a model whose download hangs must not block routing, status or other models (they
    used to fill the default thread pool: six threads, one fetching and five waiting on its lock)."""
    hub = ThreadingHTTPServer(("127.0.0.1", 0), _StuckHub)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    _StuckHub.release.clear()
    config = tmp_path / "models.yaml"
    config.write_text(_with_stuck_model(registry_yaml(model_files)))
    root = private_root()
    d = Daemon(root, config, offline=False, env={"HF_ENDPOINT": f"http://127.0.0.1:{hub.server_address[1]}",
                                                 "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf")}).start()
    pool = cf.ThreadPoolExecutor(10)
    try:
        http = client(d.socket, timeout=120)
        stuck = [pool.submit(http.post, CHAT, json={"model": "stuck", "messages": [{"role": "user", "content": "x"}]})
                 for _ in range(8)]
        time.sleep(1.5)
        fast = client(d.socket, timeout=10)
        t0 = time.monotonic()
        assert fast.get("/swarm/status").status_code == 200  # these used to wait for the download
        assert fast.post("/swarm/route", json={"prompt": "hello there"}).status_code == 200
        assert time.monotonic() - t0 < 5
        r = client(d.socket, timeout=100).post(CHAT, json={"model": "smollm2-135m", "max_tokens": 4,
                                                           "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text  # another model loads and answers meanwhile
        assert not any(f.done() for f in stuck)  # still downloading: the others did not wait for it
        _StuckHub.release.set()  # the download ends short: every one of the eight gets the same clear error
        codes = [f.result(timeout=60).status_code for f in stuck]
        assert codes == [503] * 8, codes
    finally:
        _StuckHub.release.set()
        pool.shutdown(wait=False)
        assert d.stop() == 0, d.output()
        hub.shutdown()
        hub.server_close()


def _with_stuck_model(yaml_text: str) -> str:
    head, sep, tail = yaml_text.partition("\nroutes:")
    return head + """
  - id: stuck
    format: gguf
    files:
      - name: stuck.gguf
        size: 1000
        sha256: """ + "ab" * 32 + """
        sources: [{hf: {repo: org/stuck, file: stuck.gguf}}]
""" + sep + tail
