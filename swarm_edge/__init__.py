"""swarm-edge: an on-device runtime for swarms of small language models.

Importing this package is cheap: it never imports llama_cpp, onnxruntime or numpy.
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
from swarm_edge.registry import ModelSpec, Registry, load_registry, parse_registry

__version__ = "0.1.0"

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
