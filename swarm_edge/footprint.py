"""How many bytes a model will take once loaded: a formula from its metadata, corrected by measurement.

Pure functions plus a small store. The formula is an upper bound on the model worker's PSS:

    GGUF  = file bytes (weights are read into memory, or mmap'd and all touched)
          + repacked copies, only when mmap'd (llama.cpp copies Q4_0/Q4_K/IQ4_NL matmul weights into a
            CPU_REPACK buffer; read without mmap, the originals are freed; mapped, they stay resident)
          + KV cache 2 * n_layer * n_ctx * n_head_kv * head_dim * 2 B (f16; 34/32 B a value with kv_type q8_0)
          + compute buffer n_ubatch * n_vocab * 4 B (+ output row) + the process's own Python and libraries
    ONNX  = session + activations as measured for onnxruntime (about 16x the int8 file) + tokenizer

The formula over-estimates (a compute buffer is reserved for a full batch of logits but generation
touches one row). So the first time a (model sha256, n_ctx, n_batch, other memory settings) loads, its worker
evaluates one full batch of tokens - the largest working set a request can touch, since the KV cache is cleared
(touched) at load - and reports its PSS; that peak is stored under SWARM_EDGE_HOME/calibration.json and later
estimates use `peak * CALIBRATED_MARGIN`. Peaks seen after real requests only ever raise it.

GGUF facts come from the structure check's walk (`workers.gguf_check.inspect_gguf`), never from the
`gguf` library's GGUFReader, which allocates per array element and would let a hostile file exhaust the
daemon's memory. They are cached per file sha256 under SWARM_EDGE_HOME/footprint/.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm_edge.errors import CorruptModelError
from swarm_edge.toolcalls import format_of

MiB = 1 << 20
PROCESS_BASE = 48 * MiB          # interpreter + llama_cpp/onnxruntime libraries, not shared with the forkserver
CALIBRATED_MARGIN = 1.05         # head-room over the worst peak seen so far
# The calibration file's version: 2 since workers free llama-cpp-python's samplers at once (2026-12-01). Version 1's
# peaks were raised by the garbage those left with each request (the 1.5B's stored peak was 84 MiB above its
# measured one, the 0.5B's 98), and peaks are only ever raised: a file of another version is measured anew.
CALIBRATION_VERSION = 2
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
    """Structure-check a GGUF file and read what the formula needs, in one bounded pass (no GGUFReader)."""
    from swarm_edge.workers.gguf_check import inspect_gguf

    return facts_from_info(inspect_gguf(path))


def facts_from_info(info) -> dict[str, Any]:
    """The formula's inputs from a structure check's `GGUFInfo`: the figures GGUFReader used to give."""
    meta = info.meta
    arch = meta.get("general.architecture")
    if arch is not None and not isinstance(arch, str):
        raise CorruptModelError(f"{info.path.name}: general.architecture is not a string; nothing was loaded")

    def num(key: str, default: int | None = None) -> int | None:
        v = meta.get(f"{arch}.{key}")
        if v is None:
            return default
        if isinstance(v, list) and v:  # one value per layer (OpenELM, hybrids): the largest bounds the cache
            v = max(v)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 32:
            raise CorruptModelError(f"{info.path.name}: {arch}.{key} is {v!r}, not a count; nothing was loaded")
        return v

    n_head = num("attention.head_count", 1) or 1
    n_embd = num("embedding_length", 0) or 0
    n_vocab = meta["n_vocab"] if meta.get("n_vocab") is not None else (num("vocab_size", 0) or 0)
    repacked = sum(n for name, ttype, n in info.tensors if ttype in REPACKED_TYPES and name != "token_embd.weight")
    return {
        "architecture": arch, "n_layer": num("block_count", 0), "n_embd": n_embd, "n_head": n_head,
        "n_head_kv": num("attention.head_count_kv", n_head),
        "head_dim_k": num("attention.key_length", n_embd // n_head),
        "head_dim_v": num("attention.value_length", n_embd // n_head),
        "n_vocab": n_vocab, "n_ctx_train": num("context_length", 0),
        "tensor_bytes": meta["tensor_bytes"], "repacked_bytes": repacked, "file_bytes": info.file_bytes,
        "tool_format": format_of(meta.get("chat_template")),  # how its template renders tool calls, if at all
    }


KV_BYTES = {"f16": 2.0, "q8_0": 34 / 32}  # bytes per cached value: q8_0 is 32 int8 and an f16 scale per block


def gguf_formula(facts: dict[str, Any], n_ctx: int, n_batch: int, mmap: bool = False, n_ubatch: int | None = None,
                 kv_type: str = "f16") -> dict[str, int]:
    """The formula's parts, in bytes, for one llama.cpp context (weights mmap'd or read: ModelSpec.mmap; the physical
    batch and the KV cache's type: ModelSpec.n_ubatch and kv_type)."""
    n_ubatch = n_ubatch or min(n_batch, 512)  # llama-cpp-python's default n_ubatch is 512, capped by n_batch
    values = 2 * facts["n_layer"] * n_ctx * facts["n_head_kv"] * max(facts["head_dim_k"], facts["head_dim_v"])
    kv = int(values * KV_BYTES[kv_type])
    return {
        "weights": facts["file_bytes"],
        "repacked": facts["repacked_bytes"] if mmap else 0,
        "kv_cache": kv,
        "compute": n_ubatch * facts["n_vocab"] * 4 + facts["n_vocab"] * 4 + n_ubatch * facts["n_embd"] * 4 * 8,
        "process": PROCESS_BASE,
    }


def onnx_formula(model_bytes: int, tokenizer_bytes: int) -> dict[str, int]:
    """The formula's parts for an onnxruntime embedding session."""
    return {"weights": int(model_bytes * ONNX_FACTOR), "tokenizer": tokenizer_bytes * 8, "process": PROCESS_BASE}


class FootprintStore:
    """Cached GGUF facts and calibrated peaks under SWARM_EDGE_HOME. Thread-safe."""

    def __init__(self, home: Path) -> None:
        self.facts_dir = home / "footprint"
        self.calibration_path = home / "calibration.json"
        self._lock = threading.Lock()  # protects _calibration and the calibration file
        self._calibration: dict[str, int] | None = None
        # (path, size, mtime_ns, inode) of the files this store has structure-checked; a set's add and
        # membership test are atomic, and two threads checking one file at once merely repeat the walk
        self._checked: set[tuple[str, int, int, int]] = set()
        self._facts: dict[str, dict[str, Any]] = {}  # facts by file sha256 (a file's facts never change); _lock

    def _memo(self, sha256: str) -> dict[str, Any] | None:
        with self._lock:
            return self._facts.get(sha256)

    def _remember(self, sha256: str, facts: dict[str, Any]) -> None:
        with self._lock:
            self._facts[sha256] = facts

    def facts(self, sha256: str, path: Path) -> dict[str, Any]:
        """GGUF facts for the file with this sha256, computed once (by the structure check) and cached on disk."""
        known = self._memo(sha256)
        if known is not None:
            return known
        cache = self.facts_dir / f"{sha256}.json"
        try:
            facts = json.loads(cache.read_text())
        except (OSError, ValueError):
            facts = gguf_facts(path)  # raises CorruptModelError naming the file and the reason
            self._keep(sha256, facts)
        self._remember(sha256, facts)
        return facts

    def checked_facts(self, sha256: str, path: Path) -> dict[str, Any]:
        """Structure-check a GGUF file and return its facts in one pass; once per (path, size, mtime, inode).

        Unlike `facts`, this never trusts the on-disk cache for a file it has not walked itself: the walk is
        what makes the file safe to hand to llama.cpp. Blocking (0.1 s on a 150k-token vocabulary the first
        time, one stat() after that): call it off the event loop.
        """
        from swarm_edge.workers.gguf_check import inspect_gguf

        try:
            st = path.stat()
        except OSError as exc:
            raise CorruptModelError(f"cannot open {path}: {exc}") from exc
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        known = self._memo(sha256)
        if key in self._checked and known is not None:
            return known
        info = inspect_gguf(path)
        facts = facts_from_info(info)
        if known != facts:  # first sight, or a cache written by an older version
            self._keep(sha256, facts)
            self._remember(sha256, facts)
        self._checked.add((str(path), *info.stat_key))  # the file walked, even if the path changed since
        return facts

    def _keep(self, sha256: str, facts: dict[str, Any]) -> None:
        self.facts_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.facts_dir / f"{sha256}.json", json.dumps(facts))

    @staticmethod
    def key(sha256: str, n_ctx: int, n_batch: int, mmap: bool = False, n_ubatch: int | None = None,
            kv_type: str = "f16") -> str:
        """Calibration key: the file and the settings that change its footprint (the defaults' keys unchanged)."""
        return (f"{sha256[:16]}:{n_ctx}:{n_batch}" + (":mmap" if mmap else "")
                + (f":u{n_ubatch}" if n_ubatch else "") + (f":kv-{kv_type}" if kv_type != "f16" else ""))

    def _load(self) -> dict[str, int]:
        if self._calibration is None:
            try:
                data = json.loads(self.calibration_path.read_text())
                fresh = data.pop("_version", 1) == CALIBRATION_VERSION
                self._calibration = {k: int(v) for k, v in data.items()} if fresh else {}
            except (OSError, ValueError, AttributeError, TypeError):
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
            _atomic_write(self.calibration_path, json.dumps({"_version": CALIBRATION_VERSION, **data}, indent=1,
                                                            sort_keys=True))
            return True


def estimate(parts: dict[str, int], calibrated: int | None) -> Estimate:
    """The calibrated peak with margin when there is one (a measurement beats the formula), else the formula."""
    formula = sum(parts.values())
    if calibrated:
        return Estimate(int(calibrated * CALIBRATED_MARGIN), "calibrated", formula, parts)
    return Estimate(formula, "formula", formula, parts)


def _atomic_write(path: Path, text: str) -> None:
    # a name per process and thread: the start-up warm-up and a first request may write the same file at once
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
