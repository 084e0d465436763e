"""Structural check of a GGUF file in Python, before llama.cpp's native parser ever sees it.

llama.cpp has had integer overflows in its GGUF loader (CVE-2024-21802, CVE-2024-23605, CVE-2025-53630),
so an untrusted file is walked here first: every count, length and offset must stay inside the file and
under a cap that real models stay far below, every type must be known, keys, tensor names and vocabulary
tokens must be unique (as the C strings llama.cpp reads them: a repeated token makes it abort), alignment must
be a u32 power of two and tensors must sit where llama.cpp expects them (in file order, each at the previous
one's end padded to the alignment).

The walk is bounded: numeric arrays are skipped arithmetically and string arrays cost one length read per
element, with at most MAX_STRING_ELEMENTS elements in the whole file. It takes ~0.2 s on a 152k-token
vocabulary where `gguf.GGUFReader` takes 18 s and ~0.5 GB, since GGUFReader builds numpy views per array
element (measured: ~1.6 KB for every 8-byte empty string, ~0.7 KB per u8). The same walk yields what the
memory estimate needs (`inspect_gguf`), so the daemon never runs GGUFReader. Type sizes come from the `gguf`
library rather than a table of our own.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm_edge.errors import CorruptModelError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY, _U32 = 8, 9, 4
_U64 = struct.Struct("<Q")
# Caps far above real files and far below what hurts a parser: llama.cpp keeps a 32-byte std::string per
# 8-byte array string (and GGUFReader hundreds of bytes), so each cap bounds memory and time, not just the file.
MAX_TENSORS = 1 << 16          # the largest MoE files hold a few thousand tensors
MAX_KV = 1 << 16               # real files hold tens of metadata keys
MAX_ARRAY = 1 << 21            # 2 Mi elements per array: a 262k-token vocabulary is the largest real one
MAX_STRING_ELEMENTS = 1 << 21  # all string arrays together (152k tokens + 151k merges is a big real file)
MAX_STRING = 1 << 24           # 16 MiB: chat templates are a few KiB
MAX_KEY = 1 << 10              # metadata keys are dotted names of tens of bytes
MAX_NAME = 63                  # llama.cpp's GGML_MAX_NAME is 64 bytes with the terminating NUL
MAX_DIMS = 4
MAX_ALIGNMENT = 1 << 20
MAX_KEPT_ARRAY = 1 << 12       # a wanted key that is an array (per-layer head counts) is kept up to this length
# keys whose values later layers want (footprint estimation, chat handling)
_WANTED_SUFFIXES = (".context_length", ".block_count", ".embedding_length", ".attention.head_count",
                    ".attention.head_count_kv", ".attention.key_length", ".attention.value_length", ".vocab_size")
_WANTED_KEYS = {"general.architecture", "general.name", "general.alignment", "general.file_type",
                "tokenizer.ggml.model"}


@dataclass(frozen=True)
class GGUFInfo:
    """What one walk of a GGUF file found: selected metadata and every tensor's (name, type, bytes)."""

    path: Path
    meta: dict[str, Any]
    tensors: list[tuple[str, str, int]]  # in file order; the type is the gguf library's name ("Q4_K")
    file_bytes: int
    stat_key: tuple[int, int, int]  # (size, mtime_ns, inode) of the file that was walked


class _Walker:
    def __init__(self, buf: mmap.mmap | bytes, size: int, path: Path) -> None:
        self.buf, self.size, self.pos, self.path = buf, size, 0, path
        self.strings_left = MAX_STRING_ELEMENTS

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

    def string(self, what: str, keep: bool = True, limit: int = MAX_STRING) -> str | None:
        n = self.unpack("<Q", f"{what} length")
        if n > limit:
            raise self.fail(f"{what} claims {n:,} bytes (at most {limit:,})")
        self.need(n, what)
        start, self.pos = self.pos, self.pos + n
        if not keep:
            return None
        try:
            text = bytes(self.buf[start:self.pos]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None
        if "\0" in text:  # llama.cpp reads keys, names and values as C strings: it would see less than we do
            raise self.fail(f"{what} holds a NUL byte")
        return text

    def skip_strings(self, count: int, what: str, collect: list[bytes] | None = None) -> None:
        """Step over `count` strings, one length read each (copied into `collect` if given); capped per file."""
        self.strings_left -= count
        if self.strings_left < 0:
            raise self.fail(f"{what}: string arrays hold more than {MAX_STRING_ELEMENTS:,} elements in all")
        self.need(8 * count, what)  # every element costs at least its 8-byte length: a cheap early bound
        buf, pos, size, unpack = self.buf, self.pos, self.size, _U64.unpack_from
        append = collect.append if collect is not None else None
        for i in range(count):
            if pos + 8 > size:
                self.pos = pos
                raise self.fail(f"{what} element {i:,} runs past the end of the file: truncated?")
            (n,) = unpack(buf, pos)
            pos += 8
            if n > MAX_STRING or pos + n > size:
                self.pos = pos
                raise self.fail(f"{what} element {i:,} claims {n:,} bytes")
            if append:
                append(buf[pos:pos + n])
            pos += n
        self.pos = pos

    def value(self, vtype: int, what: str, keep: bool) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what, keep)
        if vtype != _ARRAY:
            raise self.fail(f"{what} has unknown value type {vtype}")
        etype = self.unpack("<I", f"{what} element type")
        count = self.unpack("<Q", f"{what} element count")
        if count > MAX_ARRAY:
            raise self.fail(f"{what} claims {count:,} elements (at most {MAX_ARRAY:,})")
        if etype == _STRING:
            self.skip_strings(count, what)
        elif etype in _SCALARS:
            code = _SCALARS[etype]
            n = count * struct.calcsize(code)
            self.need(n, what)
            if keep and count <= MAX_KEPT_ARRAY:  # a per-layer setting: small, and the estimate wants it
                values = list(struct.unpack_from(f"<{count}{code[1]}", self.buf, self.pos))
                self.pos += n
                return values
            self.pos += n
        else:
            raise self.fail(f"{what} has unsupported element type {etype}")
        return {"count": count}


def check_gguf(path: str | Path) -> dict[str, Any]:
    """Validate a GGUF file's structure; return selected metadata (architecture, sizes, vocab, template)."""
    return inspect_gguf(path).meta


def inspect_gguf(path: str | Path) -> GGUFInfo:
    """Validate a GGUF file's structure in one bounded pass; return its metadata and tensor table."""
    p = Path(path)
    try:
        f = open(p, "rb")
    except OSError as exc:
        raise CorruptModelError(f"cannot open {p}: {exc}") from exc
    with f:
        st = os.fstat(f.fileno())  # the file we walk, not whatever the path names a moment later
        size = st.st_size
        if size < 24:
            raise CorruptModelError(f"{p.name}: {size} bytes is too small to be a GGUF file; nothing was loaded")
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise CorruptModelError(f"{p.name}: cannot map the file: {exc}; nothing was loaded") from exc
        with buf:
            return walk_gguf(buf, size, p, (size, st.st_mtime_ns, st.st_ino))


_CONSTANTS: list = []  # gguf_constants(), once loaded
_CONSTANTS_LOCK = threading.Lock()


def gguf_constants():
    """The gguf library's `constants` module (tensor types and their block sizes), without the package itself:
    `import gguf` imports numpy, ~10 MiB of PSS the daemon (which checks every GGUF it loads) would keep for good.
    constants.py imports only enum and typing. Thread-safe (loads are checked on several threads at once)."""
    import importlib.util
    import sys

    if _CONSTANTS:
        return _CONSTANTS[0]
    with _CONSTANTS_LOCK:
        if not _CONSTANTS:
            module = sys.modules.get("gguf.constants")
            if module is None:
                spec = importlib.util.find_spec("gguf")  # finds the package without importing it
                if spec is None or spec.origin is None:
                    raise ImportError("the gguf package is not installed")
                source = importlib.util.spec_from_file_location("swarm_edge._gguf_constants",
                                                                Path(spec.origin).with_name("constants.py"))
                if source is None or source.loader is None:
                    raise ImportError("gguf/constants.py not found")
                module = importlib.util.module_from_spec(source)
                sys.modules[source.name] = module  # its enums and dataclasses look their module up
                source.loader.exec_module(module)
            _CONSTANTS.append(module)
    return _CONSTANTS[0]


def walk_gguf(buf: mmap.mmap | bytes, size: int, path: Path, stat_key=(0, 0, 0)) -> GGUFInfo:
    """The structure check over a buffer already in memory (the fuzzer's entry point)."""
    constants = gguf_constants()  # the gguf library's block sizes per tensor type
    GGML_QUANT_SIZES, GGMLQuantizationType = constants.GGML_QUANT_SIZES, constants.GGMLQuantizationType  # noqa: N806

    w = _Walker(buf, size, path)
    if bytes(buf[0:4]) != b"GGUF":
        raise w.fail("magic bytes are not 'GGUF'")
    w.pos = 4
    version = w.unpack("<I", "version")
    if version not in (2, 3):
        raise w.fail(f"unsupported GGUF version {version}")
    n_tensors = w.unpack("<Q", "tensor count")
    n_kv = w.unpack("<Q", "metadata count")
    if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
        raise w.fail(f"implausible counts: {n_tensors:,} tensors, {n_kv:,} metadata keys "
                     f"(at most {MAX_TENSORS:,} and {MAX_KV:,})")
    meta: dict[str, Any] = {"gguf_version": version, "n_tensors": n_tensors}
    _walk_metadata(w, n_kv, meta)
    type_sizes = {int(k): (GGMLQuantizationType(k).name, *v) for k, v in GGML_QUANT_SIZES.items()}
    tensors, meta["data_offset"] = _walk_tensors(w, n_tensors, meta.get("general.alignment", 32), type_sizes)
    meta["tensor_bytes"] = sum(n for _, _, n in tensors)
    return GGUFInfo(path, meta, tensors, size, stat_key)


def _walk_metadata(w: _Walker, n_kv: int, meta: dict[str, Any]) -> None:
    seen: set[str] = set()
    for _ in range(n_kv):
        key = w.string("metadata key", limit=MAX_KEY)
        assert key is not None
        if not key:
            raise w.fail("a metadata key is empty")
        if key in seen:  # llama.cpp refuses these; GGUFReader would silently keep one of the values
            raise w.fail(f"metadata key {key!r} appears twice")
        seen.add(key)
        vtype = w.unpack("<I", f"type of {key}")
        if key == "general.alignment" and vtype != _U32:  # llama.cpp reads it as a u32 and nothing else
            raise w.fail(f"general.alignment has value type {vtype}, not u32 ({_U32})")
        wanted = key in _WANTED_KEYS or key.endswith(_WANTED_SUFFIXES)
        if key == "tokenizer.chat_template":
            meta["chat_template"] = w.value(vtype, key, keep=True)
        elif key == "tokenizer.ggml.tokens":
            meta["n_vocab"] = _walk_tokens(w, vtype, key)
        else:
            v = w.value(vtype, key, keep=wanted)
            if wanted:
                meta[key] = v
    alignment = meta.get("general.alignment", 32)
    if alignment == 0 or alignment & (alignment - 1) or alignment > MAX_ALIGNMENT:
        raise w.fail(f"general.alignment {alignment} is not a power of two up to {MAX_ALIGNMENT:,}")


def _walk_tokens(w: _Walker, vtype: int, key: str) -> int:
    if vtype != _ARRAY or w.unpack("<I", f"{key} element type") != _STRING:
        raise w.fail(f"{key} is not an array of strings")
    count = w.unpack("<Q", f"{key} element count")
    if count > MAX_ARRAY:
        raise w.fail(f"{key} claims {count:,} elements (at most {MAX_ARRAY:,})")
    texts: list[bytes] = []
    w.skip_strings(count, key, collect=texts)
    # llama.cpp maps each token's text to its id and aborts (GGML_ASSERT, killing the process) when two tokens
    # share a text. Its text is a C string (cut at the first NUL byte), and an empty one is renamed "[EMPTY_<id>]".
    unique = set(texts)
    if len(unique) == count and b"" not in unique and b"\0" not in b"".join(texts):
        return count  # the usual case, settled by one set
    seen: set[bytes] = set()
    for i, raw in enumerate(texts):
        text = raw.partition(b"\0")[0] or b"[EMPTY_%d]" % i
        if text in seen:
            raise w.fail(f"{key} element {i:,} repeats an earlier token ({text[:40]!r}): llama.cpp aborts on that")
        seen.add(text)
    return count


def _walk_tensors(w: _Walker, n_tensors: int, alignment: int,
                  type_sizes: dict[int, tuple[str, int, int]]) -> tuple[list[tuple[str, str, int]], int]:
    tensors: list[tuple[str, str, int]] = []
    offsets: list[int] = []
    names: set[str] = set()
    for _ in range(n_tensors):
        name = w.string("tensor name", limit=MAX_NAME)
        assert name is not None
        if name in names:
            raise w.fail(f"tensor name {name!r} appears twice")
        names.add(name)
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
        type_name, block, type_size = type_sizes[ttype]
        if dims[0] % block:
            raise w.fail(f"tensor {name}: first dimension {dims[0]} is not a multiple of its block size {block}")
        offsets.append(w.unpack("<Q", f"offset of tensor {name}"))
        tensors.append((name, type_name, elements // block * type_size))
    data_start = (w.pos + alignment - 1) // alignment * alignment
    expected = 0
    for (name, _, nbytes), offset in zip(tensors, offsets, strict=True):
        # llama.cpp lays tensors out back to back in file order, each padded to the alignment, and refuses
        # any other offset; holding to that also rules out overlaps and gaps
        if offset != expected:
            raise w.fail(f"tensor {name} is at data offset {offset:,}; llama.cpp expects {expected:,}")
        if data_start + offset + nbytes > w.size:
            w.pos = data_start + offset
            raise w.fail(f"tensor {name} ({nbytes:,} bytes) ends past the end of the file "
                         f"({w.size:,} bytes): truncated?")
        expected = offset + (nbytes + alignment - 1) // alignment * alignment
    return tensors, data_start
