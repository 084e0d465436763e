"""swarm-edge: an on-device runtime for swarms of small language models.

Importing this package is cheap: it never imports llama_cpp, onnxruntime or numpy, and the models.yaml
schema (pydantic) only when first used.
"""

from __future__ import annotations

from swarm_edge.config import Settings, parse_size
from swarm_edge.errors import (
    BackendUnavailableError,
    ChecksumError,
    ConfigError,
    CorruptModelError,
    FetchError,
    InferenceError,
    ModelFileError,
    ModelLoadError,
    RegistryError,
    SwarmEdgeError,
    UnknownModelError,
)

__version__ = "0.1.0"

_LAZY = {"ModelSpec", "Registry", "load_registry", "parse_registry"}  # pydantic + yaml: ~0.1 s, not for --help


def __getattr__(name: str):
    if name in _LAZY:
        from swarm_edge import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'swarm_edge' has no attribute {name!r}")

__all__ = [
    "BackendUnavailableError",
    "ChecksumError",
    "ConfigError",
    "CorruptModelError",
    "FetchError",
    "InferenceError",
    "ModelFileError",
    "ModelLoadError",
    "ModelSpec",
    "Registry",
    "RegistryError",
    "Settings",
    "SwarmEdgeError",
    "UnknownModelError",
    "__version__",
    "load_registry",
    "parse_registry",
    "parse_size",
]
