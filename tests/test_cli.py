"""The CLI through typer's CliRunner and through the installed `swarm-edge` binary."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from swarm_edge.cli import app

runner = CliRunner()
BIN = Path(sys.executable).parent / "swarm-edge"


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for word in ("ask", "models", "SWARM_EDGE_HOME"):
        assert word in result.output


def test_models_list_json(test_registry):
    result = runner.invoke(app, ["models", "list", "--json", "--config", str(test_registry.path)])
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in json.loads(result.stdout)}
    # right size but not hashed by this home yet: "fetched"; after a full verify: "verified"
    assert rows["smollm2-135m"]["status"] == "fetched" and rows["minilm-l6"]["format"] == "onnx"
    assert runner.invoke(app, ["models", "verify", "--config", str(test_registry.path)]).exit_code == 0
    result = runner.invoke(app, ["models", "list", "--json", "--config", str(test_registry.path)])
    assert {r["status"] for r in json.loads(result.stdout)} == {"verified"}


def test_models_list_default_swarm_shows_missing():
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0
    assert "qwen2.5-coder-1.5b" in result.output and "missing" in result.output


def test_models_verify_ok_and_bad(test_registry, tmp_path, model_files):
    ok = runner.invoke(app, ["models", "verify", "--json", "--config", str(test_registry.path)])
    assert ok.exit_code == 0 and {r["status"] for r in json.loads(ok.stdout)} == {"ok"}
    # a same-size, different-content copy of the tokenizer must fail verification
    bad_tok = tmp_path / "tokenizer.json"
    data = bytearray(model_files["minilm-l6"]["tokenizer"].read_bytes())
    data[100] ^= 1
    bad_tok.write_bytes(bytes(data))
    cfg = test_registry.path.read_text().replace(str(model_files["minilm-l6"]["tokenizer"]), str(bad_tok))
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text(cfg)
    bad = runner.invoke(app, ["models", "verify", "minilm-l6", "--config", str(bad_cfg)])
    assert bad.exit_code == 1 and "sha256" in bad.output and "Traceback" not in bad.output


def test_unknown_model_is_exit_2(test_registry):
    result = runner.invoke(app, ["ask", "hi", "--model", "nope", "--config", str(test_registry.path)])
    assert result.exit_code == 2 and "unknown model 'nope'" in result.output


@pytest.mark.real_model
def test_ask_json(test_registry):
    result = runner.invoke(app, ["ask", "hello there", "--json", "--max-tokens", "8",
                                 "--config", str(test_registry.path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"] == "smollm2-135m" and data["text"] and data["route"]["task"] == "chat"
    assert set(data["timings"]) >= {"load_s", "ttft_s", "decode_tok_s", "generate_s", "total_s"}


@pytest.mark.real_model
def test_real_binary_offline(test_registry, tmp_path):
    assert BIN.exists(), "the swarm-edge console script is not installed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SWARM_EDGE_CONFIG": str(test_registry.path)}
    out = subprocess.run([str(BIN), "ask", "--offline", "--max-tokens", "8", "hi, how are you?"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() and "-- smollm2-135m (task chat" in out.stderr


def test_real_binary_bad_config_no_traceback(tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text("models: [}")
    out = subprocess.run([str(BIN), "models", "list", "--config", str(cfg)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr and f"{cfg}:1" in out.stderr


def test_empty_prompt():
    result = runner.invoke(app, ["ask", "   "])
    assert result.exit_code == 2 and "empty" in result.output


def test_models_fetch_unknown():
    result = runner.invoke(app, ["models", "fetch", "ghost"])
    assert result.exit_code == 2 and "unknown model" in result.output


def test_status_json(test_registry):
    result = runner.invoke(app, ["status", "--json", "--budget", "2GiB", "--config", str(test_registry.path)])
    assert result.exit_code == 0, result.output
    snap = json.loads(result.stdout)
    assert snap["budget"] == 2 * 2**30 and snap["residents"] == [] and snap["stats"]["loads"] == 0
    assert snap["models"]["smollm2-135m"]["source"] in ("formula", "calibrated")
    assert snap["models"]["smollm2-135m"]["estimate"] > 90 * 2**20


def test_bad_budget_is_one_clear_line(test_registry):
    result = runner.invoke(app, ["status", "--budget", "lots", "--config", str(test_registry.path)])
    assert result.exit_code == 2 and "budget" in result.output and "Traceback" not in result.output
