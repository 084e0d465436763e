"""A small client for the daemon over its Unix socket (httpx2), used by the CLI.

Errors come back as the same exception classes the daemon raised (the error body names the class), so
`swarm-edge ask` exits with the same code and message whether it ran in-process or through the daemon.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from swarm_edge import errors
from swarm_edge.errors import SwarmEdgeError

BASE_URL = "http://swarm-edge"   # the host part is ignored on a Unix socket; the Host header says who we are


class DaemonClient:
    """HTTP over the daemon's Unix socket."""

    def __init__(self, socket_path: str | os.PathLike, *, timeout: float | None = None) -> None:
        import httpx2

        self.socket_path = Path(socket_path)
        self._httpx = httpx2
        self._http = httpx2.Client(transport=httpx2.HTTPTransport(uds=str(self.socket_path)), base_url=BASE_URL,
                                   timeout=httpx2.Timeout(timeout, connect=5.0))

    @classmethod
    def find(cls, socket_path: str | os.PathLike) -> DaemonClient | None:
        """A client if a daemon answers on `socket_path`, else None (cheap when there is no socket file)."""
        try:
            if not stat.S_ISSOCK(os.stat(socket_path).st_mode):
                return None
        except OSError:
            return None
        client = cls(socket_path)
        try:
            client._http.get("/health", timeout=2.0).raise_for_status()
            return client
        except Exception:  # refused, stale socket, not ours: behave as if there were no daemon
            client.close()
            return None

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _lost(self, exc: Exception) -> SwarmEdgeError:
        return SwarmEdgeError(f"lost the connection to the daemon at {self.socket_path}: {exc}")

    def get(self, path: str) -> Any:
        """GET a JSON document."""
        try:
            resp = self._http.get(path)
        except self._httpx.HTTPError as exc:
            raise self._lost(exc) from None
        return _json_or_raise(resp)

    def post(self, path: str, body: dict) -> Any:
        """POST JSON, return the JSON answer."""
        try:
            resp = self._http.post(path, json=body)
        except self._httpx.HTTPError as exc:
            raise self._lost(exc) from None
        return _json_or_raise(resp)

    def stream(self, path: str, body: dict) -> Iterator[dict]:
        """POST with stream=true; yield each SSE data object until [DONE]. An error event raises."""
        try:
            with self._http.stream("POST", path, json={**body, "stream": True}) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    _json_or_raise(resp)
                for line in resp.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        return
                    obj = json.loads(data)
                    if "error" in obj:
                        raise _as_exception(obj["error"], None)
                    yield obj
        except self._httpx.HTTPError as exc:
            raise self._lost(exc) from None


def _json_or_raise(resp) -> Any:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code < 400:
        return body
    err = (body or {}).get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        err = {"message": err or resp.text[:300] or f"HTTP {resp.status_code}"}
    raise _as_exception(err, resp)


def _as_exception(err: dict, resp) -> SwarmEdgeError:
    cls = getattr(errors, str(err.get("swarm_error", "")), None)
    message = err.get("message", "error")
    if not (isinstance(cls, type) and issubclass(cls, SwarmEdgeError)):
        status = f"HTTP {resp.status_code}: " if resp is not None else ""
        return SwarmEdgeError(f"daemon: {status}{message}")
    if cls is errors.BusyError:
        retry = float(resp.headers.get("retry-after", 1)) if resp is not None else 1.0
        return errors.BusyError(message, retry_after=retry)
    if cls is errors.BudgetError:
        return errors.BudgetError(message, needed=err.get("needed_bytes"), budget=err.get("budget_bytes"))
    if cls is errors.RegistryError:
        return errors.ConfigError(message)
    return cls(message)
