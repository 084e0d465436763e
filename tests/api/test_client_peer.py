"""The CLI's client sends prompts only to a daemon of its own user: a socket of another uid at the path, or a
listener running as another uid, is refused before a byte of the request is sent."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from swarm_edge.api.client import DaemonClient
from swarm_edge.errors import ConfigError

NOBODY = 65534

# a listener that records whatever it receives, running as `nobody`
LISTENER = """
import os, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
os.chmod(path, 0o777)
os.setgid(65534); os.setuid(65534)
s.listen(1)  # SO_PEERCRED reports who called listen()
print("ready", flush=True)
c, _ = s.accept()
c.settimeout(3)
try:
    data = c.recv(65536)
except OSError:
    data = b""
os.write(1, b"received %d bytes" % len(data))
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a listener as another uid")
def test_a_socket_or_listener_of_another_user_gets_no_prompt(tmp_path):
    path = tmp_path / "other.sock"
    proc = subprocess.Popen([sys.executable, "-c", LISTENER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        # the socket file is root's (bound before setuid), so the file check passes: the peer check must catch it
        client = DaemonClient(path, timeout=5)
        with pytest.raises(ConfigError, match="runs as uid 65534"):
            client.post("/v1/chat/completions", {"model": "auto", "messages": [{"role": "user", "content": "secret"}]})
        out, _ = proc.communicate(timeout=10)
        assert out == "received 0 bytes"  # not a byte of the prompt reached it
    finally:
        proc.kill()
        proc.wait()

    other = tmp_path / "other2.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(other))
    os.chown(other, NOBODY, NOBODY)
    try:
        with pytest.raises(ConfigError, match="belongs to uid 65534"):
            DaemonClient.find(other)
    finally:
        s.close()
