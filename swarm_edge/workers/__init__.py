"""Inference backends and (next) the worker processes that host them.

Backends are named by string and imported lazily, so `import swarm_edge` never pulls in llama_cpp,
onnxruntime or numpy.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from swarm_edge.errors import BackendUnavailableError
from swarm_edge.workers.base import Backend, GenerateRequest

if TYPE_CHECKING:
    from swarm_edge.registry import ModelSpec

BACKENDS = {
    "gguf": ("swarm_edge.workers.gguf:GGUFBackend", "llama-cpp-python"),
    "onnx": ("swarm_edge.workers.onnx:ONNXBackend", "onnxruntime tokenizers numpy"),
}

__all__ = ["BACKENDS", "Backend", "GenerateRequest", "backend_class", "open_backend"]


def backend_class(fmt: str) -> type[Backend]:
    """Import and return the backend class for a model format, with an install hint if it is missing."""
    try:
        target, packages = BACKENDS[fmt]
    except KeyError:
        raise BackendUnavailableError(f"no backend for format {fmt!r}; known: {', '.join(BACKENDS)}") from None
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the {fmt} backend needs {packages}: pip install {packages} ({exc})") from exc
    return getattr(module, attr)


def backend_options(spec: ModelSpec, files: dict[str, Path], threads: int) -> dict:
    """The plain-data options a backend is constructed with (they can cross a process boundary)."""
    opts: dict = {"kind": spec.kind, "n_ctx": spec.n_ctx, "n_batch": spec.n_batch,
                  "threads": spec.threads or threads, "mmap": spec.mmap, "n_ubatch": spec.n_ubatch,
                  "kv_type": spec.kv_type}
    if "tokenizer" in files:
        opts["tokenizer"] = str(files["tokenizer"])
    if spec.embedding is not None:
        opts.update(spec.embedding.model_dump())
    return opts


def open_backend(spec: ModelSpec, files: dict[str, Path], threads: int) -> Backend:
    """Load a model in this process from its verified files."""
    cls = backend_class(spec.format)
    return cls(str(files["model"]), options=backend_options(spec, files, threads))
