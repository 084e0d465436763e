"""The whole swarm-edge exception tree.

    SwarmEdgeError                 base of everything we raise on purpose
    ├── ConfigError                bad settings or env values (budget, threads, paths)
    │   └── RegistryError          models.yaml: names the file, the key path and the line
    ├── UnknownModelError          a model id that the registry does not declare
    ├── ModelFileError             a model file is missing, unreadable or not what it claims to be
    │   ├── ChecksumError          size or sha256 differs from models.yaml
    │   └── CorruptModelError      structure check failed (truncated GGUF, bad offsets, bad ONNX path)
    ├── FetchError                 no source could materialise a file (each source's failure listed)
    ├── BackendUnavailableError    an optional dependency is missing; carries an install hint
    ├── ModelLoadError             the native runtime refused a model that passed our checks
    ├── InferenceError             generation or embedding failed after the model loaded
    │   ├── ContextLengthError     the prompt (plus the answer's room) does not fit the model's context
    │   └── WorkerCrashedError     the worker process died mid-request (its budget is freed)
    ├── BudgetError                a model does not fit the memory budget even alone (both numbers)
    ├── DaemonRunningError         another daemon already serves on the socket
    ├── BusyError                  the request queue is full; retry after `retry_after` seconds
    ├── DeadlineError              a request ran past its deadline (queue, load and generation included)
    └── CloudUnavailableError      the cloud fallback failed (deadline, retries spent, breaker open, 4xx)

Native and library errors are translated at the boundary with ``raise ... from exc``; nothing above the
backends sees a llama_cpp or onnxruntime exception. This module imports nothing internal.
"""

from __future__ import annotations


class SwarmEdgeError(Exception):
    """Base class for every error swarm-edge raises on purpose."""

    exit_code = 1


class ConfigError(SwarmEdgeError):
    """A setting (env var, flag or config value) is invalid."""

    exit_code = 2


class SchemaError(ConfigError):
    """A JSON schema (response format, tool parameters) that is invalid or that the grammar cannot enforce."""


class RegistryError(ConfigError):
    """models.yaml is malformed; the message names the file, key path and line."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None,
                 line: int | None = None) -> None:
        where = path or "<models.yaml>"
        if line is not None:
            where += f":{line}"
        if key:
            where += f": {key}"
        super().__init__(f"{where}: {message}")
        self.path, self.key, self.line = path, key, line


class UnknownModelError(SwarmEdgeError):
    """The requested model id is not declared in the registry."""

    exit_code = 2


class ModelFileError(SwarmEdgeError):
    """A model file is missing, unreadable, or not the file models.yaml declares."""


class ChecksumError(ModelFileError):
    """A model file's size or sha256 does not match models.yaml."""


class CorruptModelError(ModelFileError):
    """A model file failed its structure check before any native code touched it: the GGUF walk
    (workers/gguf_check.py), or the ONNX graph and tokenizer.json checks and the load probe (workers/onnx.py)."""


class FetchError(SwarmEdgeError):
    """Every source of a model file failed; the message lists why, source by source."""


class BackendUnavailableError(SwarmEdgeError):
    """The backend's optional dependency is not installed; the message says what to install."""


class ModelLoadError(SwarmEdgeError):
    """The native runtime failed to load a model that passed our own checks."""


class InferenceError(SwarmEdgeError):
    """Generation or embedding failed after the model loaded."""


class ContextLengthError(InferenceError):
    """The prompt is longer than the model's context window allows."""

    exit_code = 2


class WorkerCrashedError(InferenceError):
    """The worker process serving a request died; the request fails, the next one reloads the model."""


class ClientGoneError(SwarmEdgeError):
    """The client hung up mid-answer (seen by a worker writing to it directly); its generation was stopped."""


class BudgetError(SwarmEdgeError):
    """A model cannot fit in the memory budget even with everything else evicted."""

    exit_code = 3

    def __init__(self, message: str, *, needed: int | None = None, budget: int | None = None) -> None:
        super().__init__(message)
        self.needed, self.budget = needed, budget


class DaemonRunningError(SwarmEdgeError):
    """Another swarm-edge daemon holds the socket's lock (or answers on it)."""


class BusyError(SwarmEdgeError):
    """The bounded request queue is full."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineError(SwarmEdgeError):
    """A request took longer than the daemon's per-request deadline; its model was freed for others."""


class CloudUnavailableError(SwarmEdgeError):
    """The cloud endpoint could not answer; the text never contains the key. `partial`: some text was streamed
    before it broke; `breaker`: refused without a connection because the circuit is open."""

    def __init__(self, message: str, *, partial: bool = False, breaker: bool = False) -> None:
        super().__init__(message)
        self.partial, self.breaker = partial, breaker
