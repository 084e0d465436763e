"""A small client for the daemon over its Unix socket, on the standard library's http.client.

Why not httpx: this runs inside every `swarm-edge ask`/`chat`, so import time and CPU per streamed token
matter (both are a fraction of httpx2's), and it needs nothing but HTTP/1.1 over AF_UNIX. The connection
is kept alive between requests; a request is sent again only when a kept-alive connection turns out to
have been closed by the daemon before it read anything. Errors come back as the same exception classes
the daemon raised (the error body names the class), so `swarm-edge ask` exits with the same code and
message whether it ran in-process or through the daemon.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from swarm_edge import errors
from swarm_edge.errors import SwarmEdgeError


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("swarm-edge", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
            _check_peer(sock, self._path)
        except (OSError, errors.ConfigError):
            sock.close()
            raise
        self.sock = sock


def _trusted(uid: int) -> bool:
    return uid in (os.getuid(), 0)


def _check_peer(sock: socket.socket, path: str) -> None:
    """Send nothing to a daemon run by another user: prompts are private (a socket path in a shared directory,
    or SWARM_EDGE_SOCKET pointing elsewhere, could otherwise deliver them to someone else's listener)."""
    from swarm_edge.api.server import peer_credentials

    try:
        pid, uid, _ = peer_credentials(sock)
    except OSError:
        return  # no way to ask on this platform: the socket file's owner was checked before connecting
    if not _trusted(uid):
        raise errors.ConfigError(f"the process listening on {path} (pid {pid}) runs as uid {uid}, not as you "
                                 f"(uid {os.getuid()}): refusing to send it anything")


class DaemonClient:
    """HTTP over the daemon's Unix socket."""

    def __init__(self, socket_path: str | os.PathLike, *, timeout: float | None = None) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self._conn: _UnixConnection | None = None

    @classmethod
    def find(cls, socket_path: str | os.PathLike) -> DaemonClient | None:
        """A client if a daemon answers on `socket_path`, else None (cheap when there is no socket file)."""
        try:
            st = os.stat(socket_path)
        except OSError:
            return None
        if not stat.S_ISSOCK(st.st_mode):
            return None
        if not _trusted(st.st_uid):
            raise errors.ConfigError(f"the socket {socket_path} belongs to uid {st.st_uid}, not to you (uid "
                                     f"{os.getuid()}): refusing to send prompts to it; set SWARM_EDGE_SOCKET or "
                                     "--socket to your own daemon's socket, or use --local")
        client = cls(socket_path)
        try:
            client._request("GET", "/health", None, timeout=2.0)
            return client
        except errors.ConfigError:
            client.close()
            raise
        except Exception:  # refused, stale socket: behave as if there were no daemon
            client.close()
            return None

    def close(self) -> None:
        """Close the kept-alive connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _lost(self, exc: Exception) -> SwarmEdgeError:
        return SwarmEdgeError(f"lost the connection to the daemon at {self.socket_path}: {exc}")

    def _open(self, method: str, path: str, body: dict | None, timeout: float | None):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        wait = timeout if timeout is not None else self.timeout
        while True:
            reused, conn, self._conn = self._conn is not None, self._conn, None
            if conn is None:
                conn = _UnixConnection(str(self.socket_path), wait)
            else:
                conn.timeout = wait
                if conn.sock is not None:
                    conn.sock.settimeout(wait)
            try:
                conn.request(method, path, body=data, headers=headers)
                return conn, conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                if not reused:
                    raise self._lost(exc) from None
                # the daemon closed the idle connection before reading this request: send it on a new one
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise self._lost(exc) from None

    def _keep(self, conn, resp) -> None:
        if resp.will_close or not resp.isclosed():
            conn.close()
        else:
            self.close()
            self._conn = conn

    def _request(self, method: str, path: str, body: dict | None, timeout: float | None = None) -> Any:
        conn, resp = self._open(method, path, body, timeout)
        try:
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._lost(exc) from None
        self._keep(conn, resp)
        return _json_or_raise(resp.status, resp.headers, raw)

    def get(self, path: str) -> Any:
        """GET a JSON document."""
        return self._request("GET", path, None)

    def post(self, path: str, body: dict) -> Any:
        """POST JSON, return the JSON answer."""
        return self._request("POST", path, body)

    def stream(self, path: str, body: dict) -> Iterator[dict]:
        """POST with stream=true; yield each SSE data object until [DONE]. An error event raises.

        Stopping early (closing the generator) closes the connection, which tells the daemon to stop.
        """
        conn, resp = self._open("POST", path, {**body, "stream": True}, None)
        finished = False
        try:
            if resp.status >= 400:
                raw = resp.read()
                finished = True
                _json_or_raise(resp.status, resp.headers, raw)
            while True:
                line = resp.readline()
                if not line:
                    raise self._lost(ConnectionError("the stream ended without [DONE]"))
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    resp.read()  # the end of the chunked body, so the connection can be used again
                    finished = True
                    return
                obj = json.loads(data)
                if "error" in obj:
                    raise _as_exception(obj["error"])
                yield obj
        except (OSError, http.client.HTTPException) as exc:
            finished = False
            raise self._lost(exc) from None
        finally:
            if finished:
                self._keep(conn, resp)
            else:
                conn.close()


def _json_or_raise(status: int, headers, raw: bytes) -> Any:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if status < 400:
        return body
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        err = {"message": err or raw[:300].decode("utf-8", errors="replace") or f"HTTP {status}"}
    raise _as_exception(err, status, headers)


def _as_exception(err: dict, status: int | None = None, headers=None) -> SwarmEdgeError:
    cls = getattr(errors, str(err.get("swarm_error", "")), None)
    message = err.get("message", "error")
    if not (isinstance(cls, type) and issubclass(cls, SwarmEdgeError)):
        return SwarmEdgeError(f"daemon: {f'HTTP {status}: ' if status else ''}{message}")
    if cls is errors.BusyError:
        return errors.BusyError(message, retry_after=float((headers or {}).get("retry-after") or 1))
    if cls is errors.BudgetError:
        return errors.BudgetError(message, needed=err.get("needed_bytes"), budget=err.get("budget_bytes"))
    if cls is errors.RegistryError:
        return errors.ConfigError(message)
    return cls(message)
