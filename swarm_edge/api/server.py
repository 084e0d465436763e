"""`swarm-edge serve`: uvicorn on a Unix socket we bind ourselves, guarded the way DESIGN.md section 7 says.

    private dir (0700, ours) -> lock file (flock, single instance) -> stale socket check -> bind under
    umask 0o177 -> hand the socket to uvicorn -> per-connection SO_PEERCRED uid check -> on SIGTERM/SIGINT:
    stop accepting, let in-flight answers finish (then cancel), stop all workers, remove the socket

uvicorn would chmod a socket it creates to 0o666, so it never creates one: it gets `sockets=[sock]`.
The uid check sits where connections are accepted (the HTTP protocol's `connection_made`), so a refused
peer never gets a byte of HTTP back.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import secrets
import signal
import socket
import stat
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

from swarm_edge import __version__
from swarm_edge.config import is_loopback
from swarm_edge.errors import ConfigError, DaemonRunningError, SwarmEdgeError

log = logging.getLogger("swarm_edge.server")
GRACEFUL_S = 10.0
SEND_TIMEOUT_S = 30.0      # a client that reads nothing for this long while we have bytes for it is cut off
SEND_BUFFER = 8 * 1024     # per Unix connection (the kernel doubles it), instead of ~200 KiB
HEADER_TIMEOUT_S = 10.0    # a request's line and headers, from its first byte (or from the connection)
BODY_TIMEOUT_S = 30.0      # its body, from the end of the headers (a 1 MiB body takes milliseconds here)
MAX_CONNECTIONS = 2048     # past this many open connections a request is answered 503 at once
REQUEST_TIMEOUT_S = 600.0  # one request, from arrival to its last byte (queue, load and generation included)


# ---------------------------------------------------------------- the socket


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


@contextlib.contextmanager
def unix_listener(path: Path, backlog: int = 128) -> Iterator[socket.socket]:
    """A listening Unix socket at `path`, 0600 in a 0700 dir, held under a single-instance lock.

    On exit the socket file and the lock file are removed (only if they are still ours).
    """
    path = Path(path)
    if len(os.fsencode(path)) >= 104:  # sun_path is 108 bytes on Linux, 104 on macOS
        raise ConfigError(f"socket path is too long for a Unix socket ({len(os.fsencode(path))} bytes): {path}")
    _check_private_dir(path.parent)
    lock_path = path.with_name(path.name + ".lock")
    try:
        lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open the lock file {lock_path}: {exc.strerror}") from None
    sock = None
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            other = os.pread(lock_fd, 32, 0).decode(errors="replace").strip() or "?"
            raise DaemonRunningError(f"another swarm-edge daemon (pid {other}) is serving on {path}") from None
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if stat.S_ISLNK(st.st_mode):
                raise ConfigError(f"{path} is a symlink: refusing to serve on it (remove it yourself if it is stale)")
            if not stat.S_ISSOCK(st.st_mode):
                raise ConfigError(f"{path} exists and is not a socket: refusing to replace it")
            if _answers(path):
                raise DaemonRunningError(f"something is already answering on {path}")
            os.unlink(path)  # a stale socket from a daemon that was killed
            log.info("removed a stale socket at %s", path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
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
            sock.close()
            with contextlib.suppress(OSError):
                now = os.lstat(path)
                if (now.st_ino, now.st_dev) == (bound.st_ino, bound.st_dev):
                    os.unlink(path)
    finally:
        if sock is not None:
            sock.close()
        # The lock file stays: unlinking it would let two daemons lock two different inodes of the same name.
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


# ---------------------------------------------------------------- serving


def _protocol_class(metrics, send_timeout: float):
    try:  # httptools (C parser, and a response writer without h11's per-event Python work) when installed
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    from swarm_edge.api.middleware import UNIX_PEER_CHECKED

    allowed = frozenset({os.getuid(), 0})
    timed = hasattr(Base, "on_headers_complete")

    class PeerChecked(Base):
        """HTTP protocol that hangs up on Unix-socket peers of another uid before reading a byte, marks the
        connections it checked (the Guard treats every other one as TCP: token and Host required), and aborts a
        connection whose client stopped reading for `send_timeout` seconds."""

        _stall = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            metrics.connections += 1
            sock = transport.get_extra_info("socket")
            if sock is None:  # fail closed: a connection we cannot classify gets nothing
                metrics.refused_peers += 1
                log.warning("refused a connection whose transport has no socket")
                transport.abort()
                return
            self._arm(HEADER_TIMEOUT_S, "first request")  # a connection that says nothing is not kept either
            if sock.family != socket.AF_UNIX:
                return  # TCP: the Guard middleware checks the token and Host header
            try:
                pid, uid, _ = peer_credentials(sock)
            except OSError:
                pid, uid = -1, -1
            if uid not in allowed:
                self._disarm()
                metrics.refused_peers += 1
                log.warning("refused a connection from uid %d (pid %d): only uid %d and root may use this daemon",
                            uid, pid, os.getuid())
                transport.abort()
                return
            self.server = (UNIX_PEER_CHECKED, None)  # what the Guard trusts; only this method sets it
            # Token streams are small: with the kernel's ~200 KiB and the transport's 64 KiB, a client that stops
            # reading would go unnoticed for thousands of tokens; with these a stall shows within ~100 tokens.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            transport.set_write_buffer_limits(high=SEND_BUFFER // 2)

        # Slow clients (slowloris): uvicorn bounds the wait between requests (timeout_keep_alive) but not a request
        # that arrives a byte at a time, nor a connection that never says anything; each would hold a descriptor
        # and a slot of the connection cap for ever. The parser's callbacks arm one timer at a time.
        _read_timer = None

        def _arm(self, seconds: float, what: str) -> None:
            self._disarm()
            if not timed:  # the h11 fallback has no parser callbacks to disarm the timer with
                return
            self._read_timer = asyncio.get_running_loop().call_later(seconds, self._too_slow, what, seconds)

        def _disarm(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def _too_slow(self, what: str, seconds: float) -> None:
            self._read_timer = None
            metrics.slow_clients += 1
            log.warning("closed a connection that did not send its %s within %g s", what, seconds)
            self.transport.abort()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm(HEADER_TIMEOUT_S, "request line and headers")

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._arm(BODY_TIMEOUT_S, "request body")

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()

        def pause_writing(self) -> None:
            # the transport's buffer is full: the client stopped reading. A frozen app (SIGSTOP, a hung UI
            # thread) would otherwise keep this connection, and whatever writes to it, waiting forever.
            super().pause_writing()
            if self._stall is None:
                self._stall = asyncio.get_running_loop().call_later(send_timeout, self._stalled)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._stall is not None:
                self._stall.cancel()
                self._stall = None

        def connection_lost(self, exc) -> None:
            metrics.connections -= 1
            self._disarm()
            if self._stall is not None:
                self._stall.cancel()
                self._stall = None
            super().connection_lost(exc)

        def _stalled(self) -> None:
            self._stall = None
            metrics.stalled_clients += 1
            log.warning("aborted a connection whose client read nothing for %g s", send_timeout)
            self.transport.abort()

    return PeerChecked


def serve(engine, *, socket_path: Path, tcp: str | None = None, token_file: Path | None = None,
          log_level: str = "warning", say=print, send_timeout: float = SEND_TIMEOUT_S,
          request_timeout: float | None = REQUEST_TIMEOUT_S) -> None:
    """Serve `engine` until SIGTERM/SIGINT. Raises ConfigError/DaemonRunningError before serving on bad setup."""
    import uvicorn

    from swarm_edge.api.app import create_app

    address = parse_tcp(tcp) if tcp else None  # a bad --tcp is refused before anything is created
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(unix_listener(socket_path))]
        token = None
        where = f"unix:{socket_path}"
        if address:
            host, port = address
            token_path = Path(token_file) if token_file else socket_path.parent / "token"
            token, created = load_token(token_path)
            tcp_sock = tcp_listener(host, port)
            stack.callback(tcp_sock.close)
            sockets.append(tcp_sock)
            where += f" and http://{host}:{port} (bearer token in {token_path}{', new' if created else ''})"
        budget = engine.scheduler.budget

        def ready() -> None:
            say(f"swarm-edge {__version__} serving on {where} (pid {os.getpid()}, budget {budget / 2**20:,.0f} MiB, "
                f"{len(engine.registry)} models, {'offline' if engine.settings.offline else 'fetching when needed'})")

        descriptors = _raise_descriptor_limit()
        # past this many open connections a request gets our 503 (JSON, Retry-After) from the Guard at once
        app = create_app(engine, token=token, on_ready=ready, request_timeout=request_timeout,
                         max_connections=max(64, min(MAX_CONNECTIONS, descriptors - 256)))
        config = uvicorn.Config(app, http=_protocol_class(app.state.metrics, send_timeout), loop="auto", lifespan="on",
                                log_level=log_level,
                                access_log=False, timeout_graceful_shutdown=GRACEFUL_S, timeout_keep_alive=30,
                                server_header=False, date_header=False)
        server = uvicorn.Server(config)
        previous = signal.signal(signal.SIGTERM, _sigterm_exit)  # uvicorn re-raises the signal it caught
        try:
            server.run(sockets=sockets)
        except _Stopped:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
        if not server.started:
            raise SwarmEdgeError("the daemon did not start (see the messages above)")
        say("swarm-edge stopped: workers stopped, socket removed")


def _raise_descriptor_limit() -> int:
    """Raise the soft limit on open files to the hard one (desktops and systemd start services at 1024, which a
    thousand idle connections exhaust: then accept() and a model load's pipes fail); the soft limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class _Stopped(BaseException):
    pass


def _sigterm_exit(signum, frame) -> None:
    raise _Stopped()


__all__ = ["load_token", "parse_tcp", "peer_credentials", "serve", "tcp_listener",
           "unix_listener"]
