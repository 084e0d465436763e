"""Structural check of a GGUF file in Python, before llama.cpp's native parser ever sees it.

llama.cpp has had integer overflows in its GGUF loader (CVE-2024-21802, CVE-2024-23605, CVE-2025-53630),
so an untrusted file is walked here first: every count, length and offset must stay inside the file,
every type must be known, alignment must be sane and tensor data must not overlap. The walk skips
array payloads it does not need, so it costs milliseconds where `gguf.GGUFReader` takes seconds on a
150k-token vocabulary. Type sizes come from the `gguf` library rather than a table of our own.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

from swarm_edge.errors import CorruptModelError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
MAX_COUNT = 1 << 24       # more tensors or keys than this is not a model, it is an attack
MAX_STRING = 1 << 24      # 16 MiB: chat templates are a few KiB
MAX_DIMS = 4
# keys whose values later layers want (footprint estimation, chat handling)
_WANTED_SUFFIXES = (".context_length", ".block_count", ".embedding_length", ".attention.head_count",
                    ".attention.head_count_kv", ".attention.key_length", ".attention.value_length", ".vocab_size")
_WANTED_KEYS = {"general.architecture", "general.name", "general.alignment", "general.file_type",
                "tokenizer.ggml.model"}


class _Walker:
    def __init__(self, buf: mmap.mmap | bytes, size: int, path: Path) -> None:
        self.buf, self.size, self.pos, self.path = buf, size, 0, path

    def fail(self, what: str) -> CorruptModelError:
        return CorruptModelError(f"{self.path.name}: not a valid GGUF file: {what} (at byte {self.pos:,}); "
                                 "nothing was loaded")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{what} runs past the end of the file ({self.size:,} bytes): truncated?")

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str, keep: bool = True) -> str | None:
        n = self.unpack("<Q", f"{what} length")
        if n > MAX_STRING:
            raise self.fail(f"{what} claims {n:,} bytes")
        self.need(n, what)
        start, self.pos = self.pos, self.pos + n
        if not keep:
            return None
        try:
            return bytes(self.buf[start:self.pos]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None

    def value(self, vtype: int, what: str, keep: bool) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what, keep)
        if vtype == _ARRAY:
            etype = self.unpack("<I", f"{what} element type")
            count = self.unpack("<Q", f"{what} element count")
            if count > self.size:
                raise self.fail(f"{what} claims {count:,} elements")
            if etype in _SCALARS:
                n = count * struct.calcsize(_SCALARS[etype])
                self.need(n, what)
                self.pos += n
            elif etype == _STRING:
                for _ in range(count):
                    self.string(f"{what} element", keep=False)
            else:
                raise self.fail(f"{what} has unsupported element type {etype}")
            return {"count": count}
        raise self.fail(f"{what} has unknown value type {vtype}")


def check_gguf(path: str | Path) -> dict[str, Any]:
    """Validate a GGUF file's structure; return selected metadata (architecture, sizes, vocab, template)."""
    from gguf import GGML_QUANT_SIZES  # the gguf library's table of block sizes per tensor type

    type_sizes = {int(k): v for k, v in GGML_QUANT_SIZES.items()}
    p = Path(path)
    try:
        f = open(p, "rb")
    except OSError as exc:
        raise CorruptModelError(f"cannot open {p}: {exc}") from exc
    with f:
        size = p.stat().st_size
        if size < 24:
            raise CorruptModelError(f"{p.name}: {size} bytes is too small to be a GGUF file; nothing was loaded")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _walk(_Walker(buf, size, p), type_sizes)


def _walk(w: _Walker, type_sizes: dict[int, tuple[int, int]]) -> dict[str, Any]:
    if bytes(w.buf[0:4]) != b"GGUF":
        raise w.fail("magic bytes are not 'GGUF'")
    w.pos = 4
    version = w.unpack("<I", "version")
    if version not in (2, 3):
        raise w.fail(f"unsupported GGUF version {version}")
    n_tensors = w.unpack("<Q", "tensor count")
    n_kv = w.unpack("<Q", "metadata count")
    if n_tensors > MAX_COUNT or n_kv > MAX_COUNT:
        raise w.fail(f"implausible counts: {n_tensors:,} tensors, {n_kv:,} metadata keys")
    meta: dict[str, Any] = {"gguf_version": version, "n_tensors": n_tensors}
    for _ in range(n_kv):
        key = w.string("metadata key")
        assert key is not None
        vtype = w.unpack("<I", f"type of {key}")
        wanted = key in _WANTED_KEYS or key.endswith(_WANTED_SUFFIXES)
        if key == "tokenizer.chat_template":
            meta["chat_template"] = w.value(vtype, key, keep=True)
        elif key == "tokenizer.ggml.tokens":
            meta["n_vocab"] = w.value(vtype, key, keep=False)["count"] if vtype == _ARRAY else None
        else:
            v = w.value(vtype, key, keep=wanted)
            if wanted:
                meta[key] = v
    alignment = meta.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1) or alignment > 1 << 20:
        raise w.fail(f"general.alignment {alignment!r} is not a power of two")
    spans = []
    for _ in range(n_tensors):
        name = w.string("tensor name")
        n_dims = w.unpack("<I", f"dims of tensor {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise w.fail(f"tensor {name} has {n_dims} dimensions")
        dims = [w.unpack("<Q", f"shape of tensor {name}") for _ in range(n_dims)]
        elements = 1
        for d in dims:
            if d == 0 or d > 1 << 40:
                raise w.fail(f"tensor {name} has dimension {d}")
            elements *= d
            if elements > 1 << 50:
                raise w.fail(f"tensor {name} has an element count that overflows")
        ttype = w.unpack("<I", f"type of tensor {name}")
        if ttype not in type_sizes:
            raise w.fail(f"tensor {name} has unknown type {ttype}")
        offset = w.unpack("<Q", f"offset of tensor {name}")
        block, type_size = type_sizes[ttype]
        if dims[0] % block:
            raise w.fail(f"tensor {name}: first dimension {dims[0]} is not a multiple of its block size {block}")
        if offset % alignment:
            raise w.fail(f"tensor {name}: offset {offset} is not aligned to {alignment}")
        spans.append((offset, elements // block * type_size, name))
    data_start = (w.pos + alignment - 1) // alignment * alignment
    end_of_previous = 0
    for offset, nbytes, name in sorted(spans):
        if offset < end_of_previous:
            raise w.fail(f"tensor {name} overlaps the tensor before it")
        end_of_previous = offset + nbytes
        if data_start + end_of_previous > w.size:
            w.pos = data_start + offset
            raise w.fail(f"tensor {name} ({nbytes:,} bytes) ends past the end of the file "
                         f"({w.size:,} bytes): truncated?")
    meta["tensor_bytes"] = sum(n for _, n, _ in spans)
    meta["data_offset"] = data_start
    return meta
