"""`swarm-edge models fetch` killed with SIGKILL at random points of a download (a real CLI process, a real
loopback Hugging Face endpoint that serves slowly): no corrupt file is ever trusted, what a killed fetch left is
swept by the next one, and the next fetch succeeds."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SWARM_EDGE = str(Path(sys.executable).with_name("swarm-edge"))
SIZE = 8 << 20
KILLS = 12


class _SlowHub(BaseHTTPRequestHandler):
    """Serves one file at about 2 MiB/s (so a download takes ~4 s and can be killed anywhere in it)."""

    body = b""
    started = threading.Event()  # set when a GET begins

    def _head(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("ETag", '"' + hashlib.sha256(self.body).hexdigest() + '"')
        self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
        self.end_headers()

    def _other(self) -> bool:
        # huggingface_hub also asks the endpoint for other things (/api/agent-harnesses while it builds its
        # headers): only the file's own URL is the download
        if "/resolve/" in self.path:
            return False
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True

    def do_HEAD(self):  # noqa: N802
        if not self._other():
            self._head()

    def do_GET(self):  # noqa: N802
        if self._other():
            return
        self._head()
        _SlowHub.started.set()
        try:
            for i in range(0, len(self.body), 64 << 10):
                self.wfile.write(self.body[i:i + (64 << 10)])
                time.sleep(1 / 32)
        except OSError:
            pass  # the fetch was killed

    def log_message(self, *args):
        pass


def _config(tmp_path: Path, port: int, sha: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(f"""
version: 1
models:
  - id: blob
    format: gguf
    files:
      - name: blob.gguf
        size: {SIZE}
        sha256: {sha}
        sources: [{{hf: {{repo: org/repo, file: blob.gguf}}}}]
routes:
  chat: {{models: [blob]}}
""")
    return path


def test_fetch_killed_at_random_points_never_leaves_a_trusted_bad_file(tmp_path):
    rng = random.Random(12)
    _SlowHub.body = rng.randbytes(SIZE)
    sha = hashlib.sha256(_SlowHub.body).hexdigest()
    hub = ThreadingHTTPServer(("127.0.0.1", 0), _SlowHub)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    home = tmp_path / "home"
    env = {**os.environ, "SWARM_EDGE_HOME": str(home), "HF_ENDPOINT": f"http://127.0.0.1:{hub.server_address[1]}",
           "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("SWARM_EDGE_CONFIG", None)
    cmd = [SWARM_EDGE, "models", "fetch", "blob", "--config", str(_config(tmp_path, hub.server_address[1], sha))]
    target = home / "models" / "blob" / "blob.gguf"
    killed_after, left_behind = [], []
    try:
        for i in range(KILLS):
            _SlowHub.started.clear()
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if i % 6 == 5:  # now and then during start-up, before any byte arrived
                delay = rng.uniform(0.1, 1.0)
            else:  # mostly anywhere in the ~4 s download
                assert _SlowHub.started.wait(60), "the fetch never started its download"
                delay = rng.uniform(0.0, 4.0)
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed_after.append(round(delay, 2))
            proc.wait(30)
            if target.parent.exists():
                left_behind.append(sorted(p.name for p in target.parent.iterdir()
                                          if p.name not in (".fetch.lock", "blob.gguf")
                                          and not p.name.endswith(".verified.json")))
            # a file at the target is only ever there whole and verified (written aside, renamed after the hash)
            if target.exists():
                assert hashlib.sha256(target.read_bytes()).hexdigest() == sha
                target.unlink()  # so the next round downloads (and can be killed) again
        assert len(killed_after) >= 10, killed_after  # that many really died mid-fetch
        assert sum(1 for names in left_behind if names) >= 5, left_behind  # and left temp files behind
        leftovers = sorted(p.name for p in target.parent.iterdir() if p.name != ".fetch.lock") \
            if target.parent.exists() else []
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert hashlib.sha256(target.read_bytes()).hexdigest() == sha
        after = sorted(p.name for p in target.parent.iterdir()
                       if p.name not in (".fetch.lock", "blob.gguf") and not p.name.endswith(".verified.json"))
        assert after == [], (leftovers, after)  # whatever the killed fetches left was swept
        print(f"\nkilled after {killed_after} s; left behind: {left_behind}; before the last fetch: {leftovers}")
    finally:
        hub.shutdown()
        hub.server_close()
