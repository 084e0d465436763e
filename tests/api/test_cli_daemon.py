"""The CLI talks to a running daemon over its socket (and runs in-process with --local or without one)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.api.conftest import SWARM_EDGE

pytestmark = pytest.mark.real_model


def _run(args: list[str], daemon=None, stdin: str | None = None, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "SWARM_EDGE_THREADS": "2", **env}
    if daemon is not None:
        full_env["SWARM_EDGE_SOCKET"] = str(daemon.socket)
        full_env["SWARM_EDGE_HOME"] = str(daemon.home)
    out = subprocess.run([SWARM_EDGE, *args], input=stdin, capture_output=True, text=True, env=full_env, timeout=300)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def test_ask_goes_through_the_daemon(daemon):
    out = _run(["ask", "--json", "--model", "smollm2-135m", "--max-tokens", "6", "Say hi"], daemon)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["via"] == "daemon" and answer["model"] == "smollm2-135m" and answer["tokens"] == 6
    assert answer["text"].strip() and answer["timings"]["total_s"] > 0
    metrics = daemon.http.get("/metrics").text
    assert 'swarm_edge_requests_total{path="/v1/chat/completions",status="200"}' in metrics

    plain = _run(["ask", "--max-tokens", "4", "hello there"], daemon)
    assert plain.returncode == 0 and plain.stdout.strip()
    assert "smollm2-135m (task chat" in plain.stderr and "daemon" in plain.stderr

    err = _run(["ask", "--model", "gpt-9", "hi"], daemon)
    assert err.returncode == 2 and "gpt-9" in err.stderr and err.stderr.startswith("error:")


def test_local_flag_and_in_process_only_flags_run_in_process(daemon, api_config):
    out = _run(["ask", "--local", "--json", "--offline", "--config", str(api_config), "--model", "smollm2-135m",
                "--max-tokens", "3", "hi"], daemon)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["via"] == "in-process"
    out = _run(["ask", "--json", "--offline", "--config", str(api_config), "--model", "smollm2-135m",
                "--max-tokens", "3", "hi"], daemon)
    assert json.loads(out.stdout)["via"] == "in-process" and "--config given" in out.stderr


def test_status_route_and_chat_via_daemon(daemon):
    st = _run(["status"], daemon)
    assert st.returncode == 0 and f"daemon pid {daemon.proc.pid}" in st.stdout
    st_json = json.loads(_run(["status", "--json"], daemon).stdout)
    assert st_json["pid"] == daemon.proc.pid

    lines = _run(["route", "-"], daemon, stdin="hello friend\nplease rewrite this\n\nhi\n")
    decisions = [json.loads(x) for x in lines.stdout.splitlines()]
    assert [d["task"] for d in decisions] == ["chat", "rewrite", "chat"]
    one = _run(["route", "hello"], daemon)
    assert one.returncode == 0 and one.stdout.startswith("task chat -> smollm2-135m")

    chat = _run(["chat", "--model", "smollm2-135m", "--max-tokens", "8"], daemon,
                stdin="My name is Ada.\n/help\nWhat is my name?\n")
    assert chat.returncode == 0, chat.stderr
    answers = [x for x in chat.stdout.splitlines() if x.strip()]
    assert len(answers) == 2 and "/reset" in chat.stderr


def test_chat_in_process_keeps_models_between_turns(api_config, tmp_path):
    out = _run(["chat", "--local", "--offline", "--config", str(api_config), "--model", "smollm2-135m",
                "--max-tokens", "5"], stdin="hello\nagain\n/model nope\n/exit\nnever read\n",
               SWARM_EDGE_HOME=str(tmp_path / "home"))
    assert out.returncode == 0, out.stderr
    assert len([x for x in out.stdout.splitlines() if x.strip()]) == 2
    assert "unknown model 'nope'" in out.stderr


def test_no_daemon_means_in_process(api_config, tmp_path):
    out = _run(["ask", "--json", "--offline", "--model", "smollm2-135m", "--max-tokens", "2", "hi"],
               SWARM_EDGE_SOCKET=str(tmp_path / "none.sock"), SWARM_EDGE_CONFIG=str(api_config),
               SWARM_EDGE_HOME=str(tmp_path / "home"))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["via"] == "in-process"
