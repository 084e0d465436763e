"""The daemon's listeners: the private Unix socket (a 0700 directory of ours, a single-instance lock, a stale socket
cleared, bound 0600), the peer's credentials, and the opt-in loopback TCP listener with its bearer token file."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import socket
import stat
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

from swarm_edge.config import is_loopback
from swarm_edge.errors import ConfigError, DaemonRunningError

log = logging.getLogger("swarm_edge.server")


def _check_private_dir(path: Path) -> None:
    """Create the socket's directory 0700, or accept an existing one only if it is ours and private."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"cannot create the socket directory {path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"socket directory {path} is not a plain directory (a symlink or a file): refusing it")
    if st.st_uid != os.getuid():
        raise ConfigError(f"socket directory {path} belongs to uid {st.st_uid}, not to us ({os.getuid()}): "
                          "choose a directory of your own with --socket")
    if st.st_mode & 0o077:
        raise ConfigError(f"socket directory {path} is accessible to others (mode {stat.S_IMODE(st.st_mode):04o}); "
                          f"use a private directory (chmod 700 {path}) or another --socket path")


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _lock(path: Path) -> int:
    """The single-instance lock beside the socket, held (flock: the kernel releases it when we die, even by
    kill -9), with our pid in it; DaemonRunningError names the daemon that holds it."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open the lock file {lock_path}: {exc.strerror}") from None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        other = os.pread(lock_fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(lock_fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        raise DaemonRunningError(f"another swarm-edge daemon (pid {other}) is serving on {path}") from None
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
    return lock_fd


def _clear_stale(path: Path) -> None:
    """Remove a socket a killed daemon left at `path`; refuse anything else there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(f"{path} is a symlink: refusing to serve on it (remove it yourself if it is stale)")
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{path} exists and is not a socket: refusing to replace it")
    if _answers(path):
        raise DaemonRunningError(f"something is already answering on {path}")
    os.unlink(path)
    log.info("removed a stale socket at %s", path)


@contextlib.contextmanager
def unix_listener(path: Path, backlog: int = 128) -> Iterator[socket.socket]:
    """A listening Unix socket at `path`, 0600 in a 0700 dir, held under a single-instance lock.

    On exit the socket file is removed (only if it is still ours). The lock file stays: unlinking it would let two
    daemons lock two different inodes of the same name.
    """
    path = Path(path)
    if len(os.fsencode(path)) >= 104:  # sun_path is 108 bytes on Linux, 104 on macOS
        raise ConfigError(f"socket path is too long for a Unix socket ({len(os.fsencode(path))} bytes): {path}")
    _check_private_dir(path.parent)
    lock_fd = _lock(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _clear_stale(path)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)  # already 0600 from the umask; explicit for filesystems that ignore it
        sock.listen(backlog)
        sock.setblocking(False)
        bound = os.lstat(path)
        try:
            yield sock
        finally:
            with contextlib.suppress(OSError):
                now = os.lstat(path)
                if (now.st_ino, now.st_dev) == (bound.st_ino, bound.st_dev):
                    os.unlink(path)
    finally:
        sock.close()
        os.close(lock_fd)


def peer_credentials(sock) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket.

    Linux: SO_PEERCRED. macOS/BSD: LOCAL_PEERCRED (struct xucred: version, uid, ngroups, groups; no pid, so
    -1) - written from the system headers, not tested on a Mac. Anything else raises OSError, and the
    connection is refused: no answer without knowing who asks.
    """
    if hasattr(socket, "SO_PEERCRED"):
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", raw)
    if sys.platform == "darwin" or "bsd" in sys.platform:
        sol_local, local_peercred = 0, 0x001
        raw = sock.getsockopt(sol_local, local_peercred, struct.calcsize("IIh16I") + 8)
        _, uid = struct.unpack_from("II", raw)
        _, gid = struct.unpack_from("hI", raw, 8)
        return -1, uid, gid
    raise OSError("no way to learn a Unix socket peer's uid on this platform")


# ---------------------------------------------------------------- TCP (opt-in)


def parse_tcp(spec: str) -> tuple[str, int]:
    """'127.0.0.1:8080' -> (host, port); loopback addresses only."""
    host, sep, port = spec.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--tcp: expected HOST:PORT, e.g. 127.0.0.1:11435, got {spec!r}")
    if host == "localhost":
        host = "127.0.0.1"
    if not is_loopback(host):
        raise ConfigError(f"--tcp: {host!r} is not a loopback address; swarm-edge only listens on this machine "
                          "(put a reverse proxy with TLS in front if you need more)")
    return host, int(port)


def tcp_listener(host: str, port: int) -> socket.socket:
    """A listening loopback TCP socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--tcp: cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def load_token(path: Path) -> tuple[str, bool]:
    """The bearer token from a 0600 file of ours; created (random, 0600) if missing. (token, created)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    else:
        token = secrets.token_urlsafe(32)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token, True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(f"token file {path}: {exc.strerror}") from None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise ConfigError(f"token file {path} must be ours and mode 0600 (it is {stat.S_IMODE(st.st_mode):04o}); "
                              f"chmod 600 {path}")
        token = f.read().strip()
    if len(token) < 16:
        raise ConfigError(f"token file {path}: the token must be at least 16 characters")
    return token, False
