"""A real `swarm-edge serve` process on a real Unix socket, serving the real test models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import pytest

from tests.conftest import registry_yaml, seed_home

SWARM_EDGE = str(Path(sys.executable).with_name("swarm-edge"))


class Daemon:
    """One daemon process; `http` speaks HTTP over its socket."""

    def __init__(self, root: Path, config: Path, *args: str, env: dict | None = None, offline: bool = True,
                 seed: Path | None = None) -> None:
        self.root = root
        self.seed = seed  # a home with measured footprints to start from (tests.conftest.calibrated_home)
        self.socket = root / "run" / "swarm-edge.sock"
        self.home = root / "home"
        self.log = root / f"daemon-{time.monotonic_ns()}.log"
        self.env = {**os.environ, "SWARM_EDGE_HOME": str(self.home), "SWARM_EDGE_THREADS": "2", **(env or {})}
        self.env.pop("SWARM_EDGE_SOCKET", None)
        self.cmd = [SWARM_EDGE, "serve", "--socket", str(self.socket), "--config", str(config),
                    *(["--offline"] if offline else []), *args]
        self.proc: subprocess.Popen | None = None
        self.http: httpx2.Client | None = None

    def start(self, timeout: float = 60.0) -> Daemon:
        if self.seed is not None:
            seed_home(self.seed, self.home)
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self._logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        self.http = client(self.socket)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if self.http.get("/health", timeout=2).status_code == 200:
                    return self
            except httpx2.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"daemon did not answer within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def status(self) -> dict:
        return self.http.get("/swarm/status").json()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.http is not None:
            self.http.close()
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon ignored signal {sig} for {timeout} s:\n{self.output()}") from None
        finally:
            self._logf.close()


def worker_processes(pid: int) -> list:
    """The daemon's worker processes (the spare, the router's embedder, every resident model): its own children
    (workers/child.py), named for ps by process.py's WORKER_NAME."""
    import psutil

    from swarm_edge.workers.process import WORKER_NAME

    out = []
    for child in psutil.Process(pid).children():
        try:
            if child.name() == WORKER_NAME:
                out.append(child)
        except psutil.NoSuchProcess:
            continue
    return out


def client(socket_path: Path, timeout: float = 120.0) -> httpx2.Client:
    """An httpx2 client over a Unix socket."""
    return httpx2.Client(transport=httpx2.HTTPTransport(uds=str(socket_path)), base_url="http://swarm-edge",
                         timeout=timeout)


def openai_sdk(daemon: Daemon):
    """The real openai SDK on a daemon's socket, for as long as the generator is open (fixture body)."""
    import openai

    http = httpx2.Client(transport=httpx2.HTTPTransport(uds=str(daemon.socket)))
    yield openai.OpenAI(base_url="http://swarm-edge/v1", api_key="not-needed", http_client=http, max_retries=0)
    http.close()


def private_root() -> Path:
    """A short private directory (sun_path is limited to 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix="se-"))


@pytest.fixture(scope="module")
def api_config(model_files, tmp_path_factory) -> Path:
    """models.yaml with smollm2-135m, minilm-l6 and smollm2-135m-b (same file, second id)."""
    path = tmp_path_factory.mktemp("cfg") / "models.yaml"
    path.write_text(registry_yaml(model_files, twin=True))
    return path


@pytest.fixture(scope="module")
def swarm_config(model_files, tmp_path_factory) -> Path:
    """models.yaml with the plans' registry: the semantic router (minilm-l6), cascade, ensemble, calculator, pipeline
    (tests.conftest.registry_yaml, swarm=True)."""
    path = tmp_path_factory.mktemp("swarm") / "models.yaml"
    path.write_text(registry_yaml(model_files, swarm=True))
    return path


def wait_for(what, timeout: float = 60.0, step: float = 0.2):
    """`what()` once it is truthy, polled every `step` s; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"not within {timeout} s")


def until_built(d) -> None:
    """Until the router's head is built (until then routes come from the rules and say so)."""
    deadline = time.monotonic() + 120
    while "still being built" in d.http.post("/swarm/route", json={"prompt": "hi"}).json()["reason"]:
        assert time.monotonic() < deadline, "the router's head was not built within 120 s"
        time.sleep(0.2)


def serve(config: Path, seed: Path | None = None):
    """Run a daemon on `config` in a private directory for as long as the generator is open (fixture body)."""
    import shutil

    root = private_root()
    d = Daemon(root, config, seed=seed).start()
    yield d
    code = d.stop()
    assert code == 0, d.output()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(api_config, calibrated_home):
    """A daemon shared by a test module (default budget), its home seeded with the measured footprints."""
    yield from serve(api_config, calibrated_home)


@pytest.fixture()
def make_daemon(api_config, calibrated_home):
    """Factory for daemons with their own flags, their homes seeded with the measured footprints (`fresh=True`:
    an empty home); all stopped (and their dirs removed) after the test."""
    import shutil

    made: list[Daemon] = []

    def make(*args: str, root: Path | None = None, start: bool = True, fresh: bool = False, config: Path | None = None,
             **kw) -> Daemon:
        d = Daemon(root or private_root(), config or api_config, *args, seed=None if fresh else calibrated_home, **kw)
        made.append(d)
        return d.start() if start else d

    yield make
    for d in made:
        d.stop()
        shutil.rmtree(d.root, ignore_errors=True)
