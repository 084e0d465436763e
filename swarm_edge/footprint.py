"""How many bytes a model will take once loaded: a formula from its metadata, corrected by measurement.

Pure functions plus a small store. The formula is an upper bound on the model worker's PSS:

    GGUF  = file bytes (weights are mmap'd and all get touched)
          + repacked copies (llama.cpp copies Q4_0/Q4_K/IQ4_NL matmul weights into a CPU_REPACK buffer)
          + KV cache 2 * n_layer * n_ctx * n_head_kv * head_dim * 2 B (f16)
          + compute buffer n_batch * n_vocab * 4 B (+ output row) + the process's own Python and libraries
    ONNX  = session + activations as measured for onnxruntime (about 16x the int8 file) + tokenizer

The formula over-estimates (a compute buffer is reserved for a full batch of logits but generation
touches one row). So the first time a (model sha256, n_ctx, n_batch) loads, its worker evaluates one full
batch of tokens - the largest working set a request can touch, since the KV cache is cleared (touched) at
load - and reports its PSS; that peak is stored under SWARM_EDGE_HOME/calibration.json and later
estimates use `peak * CALIBRATED_MARGIN`. Peaks seen after real requests only ever raise it.

GGUF facts come from the `gguf` library's GGUFReader (seconds on a 150k-token vocabulary), so they are
cached per file sha256 under SWARM_EDGE_HOME/footprint/.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm_edge.errors import CorruptModelError

MiB = 1 << 20
PROCESS_BASE = 48 * MiB          # interpreter + llama_cpp/onnxruntime libraries, not shared with the forkserver
CALIBRATED_MARGIN = 1.05         # head-room over the worst peak seen so far
REPACKED_TYPES = {"Q4_0", "Q4_K", "IQ4_NL"}  # the types ggml-cpu repacks on x86 (AVX2/AVX-512)
ONNX_FACTOR = 16.0               # measured: a 22 MB int8 MiniLM peaks at ~350 MiB embedding 4 x 256 tokens


@dataclass(frozen=True)
class Estimate:
    """Bytes a model is expected to take, and how the figure was obtained."""

    bytes: int
    source: str                  # "formula" | "calibrated"
    formula_bytes: int
    parts: dict[str, int]


def gguf_facts(path: str | Path) -> dict[str, Any]:
    """Read what the formula needs from a GGUF file with the gguf library."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    arch = _field(reader, "general.architecture")

    def num(key: str, default: int | None = None) -> int | None:
        v = _field(reader, f"{arch}.{key}")
        return int(v) if v is not None else default

    n_head = num("attention.head_count", 1) or 1
    n_embd = num("embedding_length", 0) or 0
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    n_vocab = len(tokens.data) if tokens is not None else (num("vocab_size", 0) or 0)
    repacked = sum(int(t.n_bytes) for t in reader.tensors
                   if t.tensor_type.name in REPACKED_TYPES and t.name != "token_embd.weight")
    return {
        "architecture": arch, "n_layer": num("block_count", 0), "n_embd": n_embd, "n_head": n_head,
        "n_head_kv": num("attention.head_count_kv", n_head),
        "head_dim_k": num("attention.key_length", n_embd // n_head if n_head else 0),
        "head_dim_v": num("attention.value_length", n_embd // n_head if n_head else 0),
        "n_vocab": n_vocab, "n_ctx_train": num("context_length", 0),
        "tensor_bytes": sum(int(t.n_bytes) for t in reader.tensors), "repacked_bytes": repacked,
        "file_bytes": os.path.getsize(path),
    }


def _field(reader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    value = f.contents() if hasattr(f, "contents") else f.parts[f.data[0]]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode()
    return value.item() if hasattr(value, "item") else value


def gguf_formula(facts: dict[str, Any], n_ctx: int, n_batch: int) -> dict[str, int]:
    """The formula's parts, in bytes, for one llama.cpp context."""
    n_ubatch = min(n_batch, 512)  # llama-cpp-python's default n_ubatch is 512, capped by n_batch
    kv = 2 * facts["n_layer"] * n_ctx * facts["n_head_kv"] * max(facts["head_dim_k"], facts["head_dim_v"]) * 2
    return {
        "weights": facts["file_bytes"],
        "repacked": facts["repacked_bytes"],
        "kv_cache": kv,
        "compute": n_ubatch * facts["n_vocab"] * 4 + facts["n_vocab"] * 4 + n_ubatch * facts["n_embd"] * 4 * 8,
        "process": PROCESS_BASE,
    }


def onnx_formula(model_bytes: int, tokenizer_bytes: int) -> dict[str, int]:
    """The formula's parts for an onnxruntime embedding session."""
    return {"weights": int(model_bytes * ONNX_FACTOR), "tokenizer": tokenizer_bytes * 8, "process": PROCESS_BASE}


_FACTS_MEMO: dict[str, dict[str, Any]] = {}  # facts by file sha256: a file's facts never change


class FootprintStore:
    """Cached GGUF facts and calibrated peaks under SWARM_EDGE_HOME. Thread-safe."""

    def __init__(self, home: Path) -> None:
        self.facts_dir = home / "footprint"
        self.calibration_path = home / "calibration.json"
        self._lock = threading.Lock()  # protects _calibration and the calibration file
        self._calibration: dict[str, int] | None = None

    def facts(self, sha256: str, path: Path) -> dict[str, Any]:
        """GGUF facts for the file with this sha256, computed once and cached on disk.

        The caller runs the structure check (`check_gguf`) on `path` first: GGUFReader assumes a sane file.
        """
        if sha256 in _FACTS_MEMO:
            return _FACTS_MEMO[sha256]
        cache = self.facts_dir / f"{sha256}.json"
        try:
            facts = json.loads(cache.read_text())
        except (OSError, ValueError):
            try:
                facts = gguf_facts(path)
            except (ValueError, IndexError, KeyError, TypeError) as exc:
                raise CorruptModelError(f"{path.name}: cannot read GGUF metadata: {exc}") from exc
            self.facts_dir.mkdir(parents=True, exist_ok=True)
            _atomic_write(cache, json.dumps(facts))
        _FACTS_MEMO[sha256] = facts
        return facts

    @staticmethod
    def key(sha256: str, n_ctx: int, n_batch: int) -> str:
        """Calibration key: the file and the settings that change its footprint."""
        return f"{sha256[:16]}:{n_ctx}:{n_batch}"

    def _load(self) -> dict[str, int]:
        if self._calibration is None:
            try:
                self._calibration = {k: int(v) for k, v in json.loads(self.calibration_path.read_text()).items()}
            except (OSError, ValueError, AttributeError):
                self._calibration = {}
        return self._calibration

    def calibrated(self, key: str) -> int | None:
        """The worst measured peak for this key, if any."""
        with self._lock:
            return self._load().get(key)

    def record(self, key: str, measured_bytes: int) -> bool:
        """Keep the measured peak if it is the worst yet; True if the stored figure changed."""
        with self._lock:
            data = self._load()
            if measured_bytes <= data.get(key, 0):
                return False
            data[key] = int(measured_bytes)
            self.calibration_path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.calibration_path, json.dumps(data, indent=1, sort_keys=True))
            return True


def estimate(parts: dict[str, int], calibrated: int | None) -> Estimate:
    """The calibrated peak with margin when there is one (a measurement beats the formula), else the formula."""
    formula = sum(parts.values())
    if calibrated:
        return Estimate(int(calibrated * CALIBRATED_MARGIN), "calibrated", formula, parts)
    return Estimate(formula, "formula", formula, parts)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
