"""The cloud egress: the one process of swarm-edge that holds the cloud API key and talks to the cloud.

The daemon parses model files itself (GGUF headers for admission, the router's ONNX embedder), so by DESIGN.md's
rule it must not hold the key. When a cloud is configured, `start()` runs `python -m swarm_edge.egress` (a fresh
interpreter: nothing of the daemon's memory, no model runtime imported, no model file opened) over a socket pair,
and hands it the key as the first line on that socket (never in its environment or arguments). The daemon then
holds an `EgressClient`, which has the CloudClient's interface (stream_chat, describe, aclose). `swarm-edge serve`
goes further: with the key in its environment it starts the egress, then re-executes itself without the key
(cli/admin.py), so no byte of it is left in the daemon's memory.

Wire: JSON lines. To the egress: {"id", "op": "chat", "messages", "reason", "max_tokens", "temperature", "top_p",
"stop", "seed"} and {"id", "op": "cancel"}. Back: {"id", "text"}..., then {"id", "end": result, "describe"} or
{"id", "error", "partial", "breaker", "result", "describe"}. The egress exits when its socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from swarm_edge.cloud_config import KEY_ENV, CloudConfig
from swarm_edge.errors import CloudUnavailableError, ConfigError

log = logging.getLogger("swarm_edge.egress")
FD_ENV = "SWARM_EDGE_EGRESS_FD"     # set by `serve` for the process it re-executes: the egress socket's fd
PID_ENV = "SWARM_EDGE_EGRESS_PID"
START_TIMEOUT_S = 30.0
LINE_LIMIT = 64 << 20               # one line: a chunk of text (an 8 MiB JSON answer, escaped) or a request


def start(config: CloudConfig, key: str | None, audit_path: Path) -> tuple[socket.socket, subprocess.Popen]:
    """Start the egress process (blocking: about 0.7 s); (our end of its socket, the process). The key goes over the
    socket, once. A key file it cannot use is a ConfigError here."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, FD_ENV, PID_ENV)}
    proc = subprocess.Popen([sys.executable, "-m", "swarm_edge.egress", str(theirs.fileno())], env=env,
                            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True)
    theirs.close()
    hello = {"config": config.model_dump(mode="json"), "audit": str(audit_path), "key": key}
    ours.sendall(json.dumps(hello).encode() + b"\n")
    ours.settimeout(START_TIMEOUT_S)
    try:  # the egress reads its key (file) and answers ready, or why not (a bad key file: a ConfigError here)
        reply = json.loads(ours.makefile("rb").readline() or b'{"error": "the cloud egress process exited"}')
    except (OSError, ValueError) as exc:
        reply = {"error": f"the cloud egress process did not start: {exc}"}
    ours.settimeout(None)
    if "error" in reply:
        ours.close()
        with contextlib.suppress(Exception):
            proc.kill()
            proc.wait(5)
        raise ConfigError(reply["error"])
    return ours, proc


class EgressClient:
    """The daemon's side: the cloud client's interface, over the egress process's socket.

    Built with a running egress (`inherited`, after `serve` re-executed itself), or with `starter`, which starts one
    on the first call (so an in-process answer that never goes to the cloud never pays for the process)."""

    def __init__(self, config: CloudConfig, sock: socket.socket | None = None, pid: int = 0, *,
                 proc: subprocess.Popen | None = None, starter: Callable[[], Any] | None = None) -> None:
        self.config, self._sock, self.pid, self._proc, self._starter = config, sock, pid, proc, starter
        self._described: dict[str, Any] = {"model": config.model, "host": config.host, "breaker": "closed",
                                           "calls": {"ok": 0, "failed": 0, "cancelled": 0, "refused_open_circuit": 0}}
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Queue[dict]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self._connecting: asyncio.Lock | None = None
        self._gone: str | None = None

    @classmethod
    def inherited(cls, config: CloudConfig, environ: Any) -> EgressClient | None:
        """The egress a re-executed `serve` was handed (FD_ENV), or None."""
        fd, pid = environ.pop(FD_ENV, None), environ.pop(PID_ENV, None)
        if not fd:
            return None
        os.set_inheritable(int(fd), False)  # no worker or other child gets it
        return cls(config, socket.socket(fileno=int(fd)), int(pid or 0))

    @classmethod
    def handoff(cls, config: CloudConfig, key: str | None, audit_path: Path) -> dict[str, str]:
        """Start the egress for a process about to re-execute itself: the environment entries that let the new
        image take it over (`inherited`)."""
        sock, proc = start(config, key, audit_path)
        os.set_inheritable(sock.fileno(), True)
        return {FD_ENV: str(sock.detach()), PID_ENV: str(proc.pid)}

    def __repr__(self) -> str:
        return f"EgressClient({self.config.base_url!r}, model={self.config.model!r}, pid={self.pid})"

    def describe(self) -> dict[str, Any]:
        """The egress's last report: model, host, breaker state, calls by outcome (never the key). The breaker's
        open -> half-open turn is computed here, as time passes (one clock: CLOCK_MONOTONIC is system-wide)."""
        d = {k: v for k, v in self._described.items() if k != "opened_at"}
        opened = self._described.get("opened_at")
        if d.get("breaker") == "open" and opened is not None and \
                time.monotonic() - opened >= self.config.breaker_reset_s:
            d["breaker"] = "half-open"
        return d

    async def _connect(self) -> None:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # two first calls at once must not open two transports on one socket
            if self._writer is not None:
                return
            if self._sock is None:
                assert self._starter is not None
                try:
                    self._sock, self._proc = await asyncio.to_thread(self._starter)
                except ConfigError as exc:
                    raise CloudUnavailableError(f"the cloud egress did not start: {exc}") from None
                self.pid = self._proc.pid if self._proc is not None else 0
            reader, self._writer = await asyncio.open_unix_connection(sock=self._sock, limit=LINE_LIMIT)
            self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                msg = json.loads(line)
                if "describe" in msg:
                    self._described = msg["describe"]
                queue = self._waiting.get(msg.get("id"))
                if queue is not None:
                    queue.put_nowait(msg)
        except asyncio.CancelledError:  # aclose(), or the loop ending
            self._gone = "the cloud egress was closed"
            raise
        except Exception as exc:  # noqa: BLE001 - a broken socket or a bad line: the egress is gone either way
            self._gone = f"the cloud egress process's socket failed: {type(exc).__name__}: {exc}"
        finally:  # every waiting stream learns it, whatever ended the reading
            if self._gone is None:
                self._gone = "the cloud egress process exited"
            if self._gone != "the cloud egress was closed":
                self._described = {**self._described, "breaker": "unavailable"}
                log.warning("%s; cloud calls fail until the daemon restarts", self._gone)
            for queue in self._waiting.values():
                queue.put_nowait({"error": self._gone})

    def _send(self, msg: dict) -> None:
        assert self._writer is not None
        self._writer.write(json.dumps(msg, ensure_ascii=True).encode() + b"\n")

    async def stream_chat(self, messages: list[dict[str, str]], *, reason: str, max_tokens: int | None = None,
                          temperature: float = 0.0, top_p: float = 1.0, stop: list[str] | None = None,
                          seed: int | None = None, result: Any = None,
                          response_format: dict[str, Any] | None = None,
                          tools: dict[str, Any] | None = None) -> AsyncGenerator[str, None]:
        """As CloudClient.stream_chat: the text as it streams; `result` filled; CloudUnavailableError on failure."""
        await self._connect()
        if self._gone:
            raise CloudUnavailableError(self._gone)
        rid, queue = next(self._ids), asyncio.Queue[dict]()
        self._waiting[rid] = queue
        done = False
        try:
            self._send({"id": rid, "op": "chat", "messages": messages, "reason": reason, "max_tokens": max_tokens,
                        "temperature": temperature, "top_p": top_p, "stop": stop, "seed": seed,
                        "response_format": response_format, "tools": tools})
            while True:
                msg = await queue.get()
                if "text" in msg:
                    yield msg["text"]
                    continue
                _fill(result, msg.get("end") or msg.get("result"))
                done = True
                if "error" in msg:
                    raise CloudUnavailableError(msg["error"], partial=bool(msg.get("partial")),
                                                breaker=bool(msg.get("breaker")))
                return
        finally:
            self._waiting.pop(rid, None)
            if not done and not self._gone:
                with contextlib.suppress(Exception):
                    self._send({"id": rid, "op": "cancel"})

    async def aclose(self) -> None:
        """Close the socket: the egress finishes, closes its client and exits; reaped here."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        elif self._sock is not None:
            self._sock.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
        await asyncio.to_thread(self._reap)

    def _reap(self) -> None:
        if self._proc is not None:  # ours: Popen knows whether it was reaped, and never signals a recycled pid
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            return
        if self.pid:  # handed over by `serve` before it re-executed itself: still our child
            for _ in range(50):
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(self.pid, os.WNOHANG)[0]:
                        return
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)


def _fill(result: Any, data: dict | None) -> None:
    if result is None or not data:
        return
    for f in fields(result):
        if f.name in data:
            setattr(result, f.name, data[f.name])


# ---------------------------------------------------------------- the egress process


async def _chat(client: Any, msg: dict, send) -> None:
    from swarm_edge.cloud import CloudResult

    rid, res = msg["id"], CloudResult(client.config.model)
    try:
        async for text in client.stream_chat(msg["messages"], reason=msg["reason"], max_tokens=msg["max_tokens"],
                                             temperature=msg["temperature"], top_p=msg["top_p"], stop=msg["stop"],
                                             seed=msg["seed"], result=res,
                                             response_format=msg.get("response_format"), tools=msg.get("tools")):
            send({"id": rid, "text": text})
    except CloudUnavailableError as exc:
        send({"id": rid, "error": str(exc), "partial": exc.partial, "breaker": exc.breaker, "result": asdict(res),
              "describe": _described(client)})
        return
    except Exception as exc:  # noqa: BLE001 - anything else is this call's failure, never a silent hang
        send({"id": rid, "error": client.scrub(f"the cloud call failed: {type(exc).__name__}: {exc}"),
              "partial": bool(res.tokens), "result": asdict(res), "describe": _described(client)})
        return
    send({"id": rid, "end": asdict(res), "describe": _described(client)})


def _described(client: Any) -> dict[str, Any]:
    return {**client.describe(), "opened_at": client.breaker.opened_at}


async def serve(sock: socket.socket) -> None:
    """Answer the daemon until its end of the socket closes."""
    from swarm_edge.cloud import CloudClient, load_key, make_undumpable

    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)

    def send(obj: dict) -> None:  # surrogates a stream may carry are escaped, never an encoding error
        writer.write(json.dumps(obj, ensure_ascii=True).encode() + b"\n")

    hello = json.loads(await reader.readline())
    config = CloudConfig(**hello["config"])
    try:  # the key from the daemon's environment (sent once), or from the api_key_file, which only we read
        key = load_key(config, {KEY_ENV: hello.pop("key")} if hello.get("key") else {})
    except ConfigError as exc:
        send({"error": str(exc)})
        await writer.drain()
        return
    if key is not None:
        make_undumpable()  # no core dump, no ptrace, no /proc/PID/mem for other processes of our uid
    client = CloudClient(config, key, Path(hello["audit"]))
    send({"ready": True, "describe": client.describe()})
    tasks: dict[int, asyncio.Task] = {}

    try:
        while line := await reader.readline():
            msg = json.loads(line)
            if msg.get("op") == "chat":
                task = asyncio.get_running_loop().create_task(_chat(client, msg, send))
                tasks[msg["id"]] = task
                task.add_done_callback(functools.partial(_forget, tasks, msg["id"]))
            elif msg.get("op") == "cancel" and msg.get("id") in tasks:
                tasks[msg["id"]].cancel()
    finally:
        for task in list(tasks.values()):
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        await client.aclose()


def _forget(tasks: dict[int, asyncio.Task], rid: int, _done: object) -> None:
    tasks.pop(rid, None)


def main() -> None:
    # Ctrl-C in the terminal and a service manager's SIGTERM reach the daemon's whole process group: the egress lets
    # in-flight calls finish and exits when the daemon closes its socket (or dies)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fd = int(sys.argv[1])
    try:
        asyncio.run(serve(socket.socket(fileno=fd)))
    except (KeyboardInterrupt, ConnectionError):
        pass


if __name__ == "__main__":
    main()


__all__ = ["FD_ENV", "PID_ENV", "EgressClient", "start"]
