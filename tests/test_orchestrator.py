"""ask() end to end in-process: route, verified files, real llama.cpp, trace."""

import pytest

from swarm_edge.config import Settings
from swarm_edge.errors import ConfigError, UnknownModelError
from swarm_edge.orchestrator import ask

pytestmark = pytest.mark.real_model


def test_ask_routes_and_answers(test_registry, settings):
    streamed = []
    answer = ask("hello! what is the capital of France?", test_registry, settings, on_token=streamed.append)
    assert answer.model == "smollm2-135m" and answer.route.task == "chat"
    assert answer.text.strip() and answer.text == "".join(streamed)
    assert answer.tokens == len(streamed) > 0
    t = answer.timings
    assert t["load_s"] > 0 and t["ttft_s"] > 0 and t["total_s"] >= t["generate_s"]
    assert answer.left_device is False
    d = answer.to_dict()
    assert d["route"]["reason"].startswith("keywords for 'chat'")


def test_explicit_model_and_errors(test_registry, settings):
    a = ask("Rewrite: i has a apple", test_registry, settings, model_id="smollm2-135m", max_tokens=8)
    assert a.route.task == "explicit" and a.tokens <= 8
    with pytest.raises(UnknownModelError, match="smollm2-135m"):
        ask("x", test_registry, settings, model_id="gpt-9")
    with pytest.raises(ConfigError, match="embedding model"):
        ask("x", test_registry, settings, model_id="minilm-l6")


def test_offline_never_fetches(tmp_path):
    from swarm_edge.config import DEFAULT_CONFIG
    from swarm_edge.errors import ModelFileError
    from swarm_edge.registry import load_registry

    settings = Settings.load(home=tmp_path / "empty", offline=True, threads=1)
    with pytest.raises(ModelFileError, match="models fetch smollm2-135m"):
        ask("hi", load_registry(DEFAULT_CONFIG), settings, model_id="smollm2-135m")
    assert not (tmp_path / "empty" / "models" / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf").exists()
