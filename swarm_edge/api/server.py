"""`swarm-edge serve`: uvicorn on a Unix socket we bind ourselves, guarded the way DESIGN.md section 7 says.

    private dir (0700, ours) -> lock file (flock, single instance) -> stale socket check -> bind under
    umask 0o177 -> hand the socket to uvicorn -> per-connection SO_PEERCRED uid check -> on SIGTERM/SIGINT:
    stop accepting, let in-flight answers finish (then cancel), stop all workers, remove the socket

uvicorn would chmod a socket it creates to 0o666, so it never creates one: it gets `sockets=[sock]`.
The uid check sits where connections are accepted (the HTTP protocol's `connection_made`), so a refused
peer never gets a byte of HTTP back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

from swarm_edge import __version__
from swarm_edge.api.listeners import load_token, parse_tcp, peer_credentials, tcp_listener, unix_listener
from swarm_edge.api.protocol import BODY_TIMEOUT_S, HEADER_TIMEOUT_S, SEND_BUFFER  # noqa: F401  (re-exported)
from swarm_edge.api.protocol import protocol_class as _protocol_class
from swarm_edge.errors import SwarmEdgeError
from swarm_edge.workers import direct

log = logging.getLogger("swarm_edge.server")
GRACEFUL_S = 10
SEND_TIMEOUT_S = 30.0      # a client that reads nothing for this long while we have bytes for it is cut off
MAX_CONNECTIONS = 2048     # past this many open connections a request is answered 503 at once
REQUEST_TIMEOUT_S = 600.0  # one request, from arrival to its last byte (queue, load and generation included)


def serve(engine, *, socket_path: Path, tcp: str | None = None, token_file: Path | None = None,
          log_level: str = "warning", say=print, send_timeout: float = SEND_TIMEOUT_S,
          request_timeout: float | None = REQUEST_TIMEOUT_S) -> None:
    """Serve `engine` until SIGTERM/SIGINT. Raises ConfigError/DaemonRunningError before serving on bad setup."""
    import uvicorn

    from swarm_edge.api.app import create_app

    address = parse_tcp(tcp) if tcp else None  # a bad --tcp is refused before anything is created
    direct_path = direct.enabled(engine.settings.env)  # so is a bad SWARM_EDGE_DIRECT
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
            say(f"swarm-edge {__version__} serving on {where} (pid {os.getpid()}, budget {budget / 2**20:,.0f} MiB: "
                f"{engine.budget_source}, "
                f"{len(engine.registry)} models, {'offline' if engine.settings.offline else 'fetching when needed'})")

        descriptors = _raise_descriptor_limit()
        # past this many open connections a request gets our 503 (JSON, Retry-After) from the Guard at once
        app = create_app(engine, token=token, on_ready=ready, request_timeout=request_timeout,
                         max_connections=max(64, min(MAX_CONNECTIONS, descriptors - 256)),
                         direct=direct_path)
        config = uvicorn.Config(app, http=_protocol_class(app.state.metrics, send_timeout), loop="auto", lifespan="on",
                                log_level=log_level,
                                access_log=False, timeout_graceful_shutdown=GRACEFUL_S, timeout_keep_alive=30,
                                server_header=False, date_header=False,
                                # no proxy stands in front of a local daemon: X-Forwarded-* is never believed, and
                                # uvicorn's middleware that reads it is one layer less on every request
                                proxy_headers=False)
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
