"""The daemon's HTTP protocol: uvicorn's, plus what must happen where connections are accepted. A Unix-socket peer
of another uid is hung up on before a byte of HTTP is read; a checked Unix peer is marked (the Guard treats every
other connection as TCP: token and Host required); a request that arrives a byte at a time, or a connection that
says nothing, is closed (slowloris); a client that stops reading is cut off after `send_timeout`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

from swarm_edge.api.listeners import peer_credentials
from swarm_edge.api.middleware import UNIX_PEER_CHECKED
from swarm_edge.api.streaming import TRANSPORT

log = logging.getLogger("swarm_edge.server")
SEND_BUFFER = 8 * 1024     # per Unix connection (the kernel doubles it), instead of ~200 KiB
HEADER_TIMEOUT_S = 10.0    # a request's line and headers, from its first byte (or from the connection)
BODY_TIMEOUT_S = 30.0      # its body, from the end of the headers (a 1 MiB body takes milliseconds here)


class _PeerChecked:
    """Mixed in before uvicorn's protocol class by `protocol_class` (which sets the class attributes)."""

    metrics: Any
    send_timeout: float
    allowed: frozenset[int]
    timed: bool              # the parser has the callbacks that disarm the slow-client timer (httptools)
    transport: Any
    server: Any
    _stall: asyncio.TimerHandle | None = None
    _read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self.metrics.connections += 1
        sock = transport.get_extra_info("socket")
        if sock is None:  # fail closed: a connection we cannot classify gets nothing
            self.metrics.refused_peers += 1
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
        if uid not in self.allowed:
            self._disarm()
            self.metrics.refused_peers += 1
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
    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        if not self.timed:  # the h11 fallback has no parser callbacks to disarm the timer with
            return
        self._read_timer = asyncio.get_running_loop().call_later(seconds, self._too_slow, what, seconds)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _too_slow(self, what: str, seconds: float) -> None:
        self._read_timer = None
        self.metrics.slow_clients += 1
        log.warning("closed a connection that did not send its %s within %g s", what, seconds)
        self.transport.abort()

    def on_message_begin(self) -> None:
        super().on_message_begin()  # type: ignore[misc]
        self.scope[TRANSPORT] = self.transport  # type: ignore[attr-defined]  # the direct path hands it over
        self._arm(HEADER_TIMEOUT_S, "request line and headers")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()  # type: ignore[misc]
        self._arm(BODY_TIMEOUT_S, "request body")

    def on_message_complete(self) -> None:
        super().on_message_complete()  # type: ignore[misc]
        self._disarm()

    def pause_writing(self) -> None:
        # the transport's buffer is full: the client stopped reading. A frozen app (SIGSTOP, a hung UI
        # thread) would otherwise keep this connection, and whatever writes to it, waiting forever.
        super().pause_writing()  # type: ignore[misc]
        if self._stall is None:
            self._stall = asyncio.get_running_loop().call_later(self.send_timeout, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def connection_lost(self, exc) -> None:
        self.metrics.connections -= 1
        self._disarm()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        super().connection_lost(exc)  # type: ignore[misc]

    def _stalled(self) -> None:
        self._stall = None
        self.metrics.stalled_clients += 1
        log.warning("aborted a connection whose client read nothing for %g s", self.send_timeout)
        self.transport.abort()


def protocol_class(metrics: Any, send_timeout: float) -> type:
    """uvicorn's HTTP protocol (httptools when installed: a C parser, and a response writer without h11's
    per-event Python work) with the checks above."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base  # type: ignore[assignment]

    return type("PeerChecked", (_PeerChecked, Base), {
        "metrics": metrics, "send_timeout": send_timeout, "allowed": frozenset({os.getuid(), 0}),
        "timed": hasattr(Base, "on_headers_complete"),
        "__doc__": "The daemon's HTTP protocol (swarm_edge.api.protocol)."})


__all__ = ["BODY_TIMEOUT_S", "HEADER_TIMEOUT_S", "SEND_BUFFER", "protocol_class"]
