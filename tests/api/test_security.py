"""The socket's guards, tested on real daemon processes: modes, peer uid, single instance, stale socket,
symlinks, loose directories, graceful SIGTERM, and the opt-in TCP listener's token and Host checks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.api.conftest import private_root

NOBODY = 65534
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"

CONNECT_AS_NOBODY = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print("CONNECT-FAILED", exc.errno); sys.exit(0)
data = b""
try:
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # may already fail: the daemon hung up first
    while chunk := s.recv(4096):
        data += chunk
except OSError as exc:
    print("RESET", exc.errno)
print("BYTES", len(data), data[:12])
"""


def _as_nobody(sock: Path) -> str:
    if os.getuid() != 0:
        pytest.skip("switching to another uid needs root (CI runs as root)")
    out = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", SYSTEM_PYTHON,
                          "-c", CONNECT_AS_NOBODY, str(sock)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_modes_and_other_uid_refused(make_daemon):
    d = make_daemon()
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600 and stat.S_ISSOCK(os.stat(d.socket).st_mode)
    assert stat.S_IMODE(os.stat(d.socket.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(str(d.socket) + ".lock").st_mode) == 0o600

    # 1. as shipped, the file system already stops another uid
    assert "CONNECT-FAILED 13" in _as_nobody(d.socket)  # EACCES
    # 2. defence in depth: even with the modes opened up, the peer uid check hangs up before any HTTP
    os.chmod(d.root, 0o755)
    os.chmod(d.socket.parent, 0o711)
    os.chmod(d.socket, 0o666)
    out = _as_nobody(d.socket)
    assert "BYTES 0 " in out, out
    metrics = d.http.get("/metrics").text
    assert "swarm_edge_refused_connections_total 1" in metrics
    assert d.http.get("/health").status_code == 200  # our own uid still gets answers


def test_second_instance_exits_and_first_keeps_serving(make_daemon):
    first = make_daemon()
    second = make_daemon(root=first.root, start=False)
    second.proc = subprocess.Popen(second.cmd, env=second.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = second.proc.communicate(timeout=60)
    assert second.proc.returncode != 0
    assert f"another swarm-edge daemon (pid {first.proc.pid})" in out.decode()
    assert first.http.get("/health").json()["pid"] == first.proc.pid
    assert stat.S_ISSOCK(os.lstat(first.socket).st_mode)


def test_stale_socket_after_kill_9(make_daemon):
    d = make_daemon()
    d.http.post("/v1/chat/completions", json={"model": "smollm2-135m", "max_tokens": 2,
                                              "messages": [{"role": "user", "content": "hi"}]})
    children = psutil.Process(d.proc.pid).children(recursive=True)
    assert len(children) >= 2  # forkserver, worker(s)
    d.proc.kill()
    d.proc.wait()
    assert stat.S_ISSOCK(os.lstat(d.socket).st_mode)  # left behind, nobody answers
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"orphaned after kill -9: {[p.info for p in alive]}"  # workers see EOF and exit
    again = make_daemon(root=d.root)
    assert again.http.get("/health").json()["pid"] == again.proc.pid


@pytest.mark.parametrize("kind", ["symlink", "file", "loose-dir"])
def test_refuses_unsafe_paths(make_daemon, kind, tmp_path):
    root = private_root()
    run = root / "run"
    run.mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    target.write_text("precious")
    sock = run / "swarm-edge.sock"
    if kind == "symlink":
        sock.symlink_to(target)
    elif kind == "file":
        sock.write_text("precious")
    else:
        os.chmod(run, 0o755)
    d = make_daemon(root=root, start=False)
    out = subprocess.run(d.cmd, env=d.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert {"symlink": "is a symlink", "file": "is not a socket", "loose-dir": "accessible to others"}[kind] \
        in out.stderr
    assert "Traceback" not in out.stderr
    assert target.read_text() == "precious"
    if kind == "file":
        assert sock.read_text() == "precious"


def test_sigterm_finishes_in_flight_work_and_cleans_up(make_daemon):
    d = make_daemon()
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Count from one to ten."}],
            "max_tokens": 24, "stream": True}
    with d.http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, (r.read(), d.output())
        lines = r.iter_lines()
        first = next((line for line in lines if line.startswith("data: ")), None)
        assert first is not None, d.output()
        tree = [psutil.Process(d.proc.pid), *psutil.Process(d.proc.pid).children(recursive=True)]
        d.proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"  # the answer in flight was finished
    assert d.proc.wait(30) == 0
    _, alive = psutil.wait_procs(tree, timeout=15)
    assert not alive
    assert not d.socket.exists()
    assert "socket removed" in d.output()
    with pytest.raises(OSError):
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(d.socket))


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_tcp_needs_token_and_loopback_host(make_daemon):
    import httpx2

    port = _free_port()
    d = make_daemon("--tcp", f"127.0.0.1:{port}")
    token_file = d.socket.parent / "token"
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    token = token_file.read_text().strip()
    url = f"http://127.0.0.1:{port}"
    with httpx2.Client(base_url=url, timeout=30) as tcp:
        assert tcp.get("/v1/models").status_code == 401
        assert tcp.get("/v1/models", headers={"Authorization": "Bearer wrong-token-value"}).status_code == 401
        ok = tcp.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["data"][0]["id"] == "auto"
        rebound = tcp.get("/v1/models", headers={"Authorization": f"Bearer {token}", "Host": "evil.example:80"})
        assert rebound.status_code == 403  # DNS rebinding: a web page's request carries its own Host
    assert d.http.get("/v1/models").status_code == 200  # the Unix socket needs no token


def test_tcp_refuses_non_loopback_and_loose_token_file(make_daemon):
    root = private_root()
    d = make_daemon("--tcp", "0.0.0.0:8080", root=root, start=False)
    out = subprocess.run(d.cmd, env=d.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not a loopback address" in out.stderr

    token = root / "token"
    token.write_text("a-long-enough-token-value\n")
    os.chmod(token, 0o644)
    d = make_daemon("--tcp", f"127.0.0.1:{_free_port()}", "--token-file", str(token), root=root, start=False)
    out = subprocess.run(d.cmd, env=d.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "mode 0600" in out.stderr
    assert not (root / "run" / "swarm-edge.sock").exists()

