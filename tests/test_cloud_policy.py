"""When requests go to the cloud, on real models: the device answers with smollm2-135m (routed by minilm-l6),
the stand-in cloud is llama-cpp-python's own server on loopback serving qwen2.5-coder-0.5b (tests/cloudkit.py).

Every escalation rule (a hard task, an unsure router, a local failure, allow_cloud false, an unavailable cloud) is
tested over FAKE sessions and a FAKE cloud in tests/fake/test_escalation.py; these keep what needs the real pieces:
redaction on the wire to a real server, a real cascade unsure to its end going there, and offline opening no
socket at all."""

from __future__ import annotations

import json
import socket

import pytest

from swarm_edge.config import Settings
from swarm_edge.errors import ConfigError
from swarm_edge.registry import parse_registry
from tests.conftest import STANDIN_KEY, registry_yaml, run_stream

pytestmark = pytest.mark.real_model


def _setup(model_files, tmp_path, url, *, offline=False, min_logprob=-0.35, **cloud):
    text = registry_yaml(model_files, swarm=True, min_logprob=min_logprob)
    text += "cloud:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in
                                 {"model": "stand-in", "escalate_below": None, "read_timeout_s": 60,
                                  "retries": 0, **cloud}.items())
    path = tmp_path / "models.yaml"
    path.write_text(text)
    env = {"SWARM_EDGE_CLOUD_URL": url, "SWARM_EDGE_CLOUD_API_KEY": STANDIN_KEY}
    settings = Settings.load(home=tmp_path / "home", threads=2, offline=offline, environ=env)
    return parse_registry(text, path), settings


def _run(registry, settings, prompt, *, budget="8GiB", **kw):
    """(answer, streamed text, event types, the engine's cloud client or None) of one request."""
    answer, streamed, kinds, engine = run_stream(registry, settings, prompt, budget=budget, max_tokens=24, **kw)
    return answer, streamed, kinds, engine.cloud


def _audit(settings) -> list[dict]:
    path = settings.home / "audit" / "cloud.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_explicit_cloud_streams_the_stand_in_answer_redacted(model_files, tmp_path, standin):
    registry, settings = _setup(model_files, tmp_path, standin.url)
    answer, streamed, kinds, _ = _run(registry, settings,
                                      "My email is jane.doe@example.com. Say hello to me in one sentence.",
                                      model_id="cloud")
    assert answer.model == "cloud:stand-in" and answer.plan == "cloud" and answer.route.target == "cloud"
    assert answer.text and streamed == answer.text and kinds.count("token") > 1
    assert kinds[0] == "start" and kinds[-1] == "done"
    esc = answer.escalation
    assert esc["reason"] == 'requested by the caller (model "cloud")' and esc["outcome"] == "answered"
    assert esc["redacted"] == {"EMAIL": 1} and esc["attempts"] == 1 and esc["bytes_sent"] > 0
    assert answer.left_device is True
    (step,) = answer.steps
    assert step["role"] == "cloud" and step["tokens"] > 0 and step["timings"]["ttft_s"] > 0
    (line,) = _audit(settings)
    assert line["reason"] == esc["reason"] and line["redacted"] == {"EMAIL": 1} and line["outcome"] == "ok"
    assert "jane.doe" not in json.dumps(line) and STANDIN_KEY not in json.dumps(answer.to_dict())




def test_cascade_whose_last_local_model_is_unsure_escalates(model_files, tmp_path, standin):
    # min_logprob 0: no local answer is that sure, so both local models are tried, then the cloud answers
    registry, settings = _setup(model_files, tmp_path, standin.url, min_logprob=0.0)
    answer, streamed, _, _ = _run(registry, settings, "Rewrite this more politely: close the door now.")
    first, last, cloud = answer.steps
    assert (first["model"], first["accepted"]) == ("smollm2-135m", False)
    assert (last["model"], last["role"], last["accepted"]) == ("smollm2-135m-b", "cascade-final", False)
    assert cloud["role"] == "cloud" and answer.model == "cloud:stand-in"
    assert answer.escalation["reason"].startswith("cascade: the last local model smollm2-135m-b is unsure too")
    assert streamed == answer.text and answer.tokens == cloud["tokens"]





@pytest.fixture()
def no_network(monkeypatch):
    """Every connect() on a socket that is not AF_UNIX is refused and recorded; the test asserts the record is
    empty (raising AssertionError inside the connect would be swallowed by whatever handles connect errors)."""
    attempts: list = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(real):
        def connect(self, address):
            if self.family != socket.AF_UNIX:
                attempts.append((self.family, address))
                raise ConnectionRefusedError(f"test guard: network connect to {address}")
            return real(self, address)
        return connect

    monkeypatch.setattr(socket.socket, "connect", guard(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guard(real_connect_ex))
    return attempts


def test_offline_builds_no_client_and_opens_no_network_socket(model_files, tmp_path, standin, no_network):
    registry, settings = _setup(model_files, tmp_path, standin.url, offline=True, hard_tasks=["chat"])
    answer, _, _, cloud = _run(registry, settings, "Hi! How are you today?", model_id="auto")
    assert cloud is None and answer.model == "smollm2-135m" and answer.left_device is False
    assert answer.escalation["outcome"].startswith("stayed on the device: offline")
    with pytest.raises(ConfigError, match='model "cloud": the cloud fallback is off here \\(offline'):
        _run(registry, settings, "Hi!", model_id="cloud")
    assert no_network == []
    # online, the request leaves through the egress process (egress.py): this process, which parses model files,
    # still opens no network socket; and the guard is live (a connect from here is stopped and recorded)
    registry, settings = _setup(model_files, tmp_path, standin.url, hard_tasks=["chat"])
    answer, _, _, cloud = _run(registry, settings, "Hi! How are you today?")
    assert cloud is not None and answer.left_device is True and answer.escalation["outcome"] == "answered"
    assert no_network == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", standin.port), timeout=5)
    assert no_network and no_network[0][1][1] == standin.port
