"""Fuzzing the GGUF structure check: mutated real and synthetic files are accepted or refused with a
CorruptModelError, quickly, and never raise anything else; what it accepts, an independent parser reads the
same way. The builders, seeds and mutators here are also the campaign's (benchmarks/fuzz_gguf.py)."""

from __future__ import annotations

import mmap
import random
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from swarm_edge.errors import CorruptModelError
from swarm_edge.footprint import facts_from_info
from swarm_edge.workers.gguf_check import walk_gguf

SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
T_F32, T_F16, T_Q4_0, T_Q8_0, T_Q4_K = 0, 1, 2, 8, 12  # ggml tensor types
FUZZ_INPUTS = 5000
TIME_BOUND_S = 1.0  # per input; the campaign's "hang" threshold too


# ---------------------------------------------------------------- building GGUF files by hand

@dataclass
class Seed:
    """A GGUF file's bytes and where its integer fields (counts, lengths, types, offsets) are."""

    name: str
    data: bytes
    fields: list[tuple[int, str]] = field(default_factory=list)  # (position, struct format)
    header_end: int = 0  # where the tensor data starts: mutations aim before it


class _Out:
    def __init__(self) -> None:
        self.buf = bytearray()
        self.fields: list[tuple[int, str]] = []

    def num(self, fmt: str, v, mark: bool = True) -> None:
        if mark:
            self.fields.append((len(self.buf), fmt))
        self.buf += struct.pack(fmt, v)

    def string(self, s: str | bytes) -> None:
        b = s.encode() if isinstance(s, str) else s
        self.num("<Q", len(b))
        self.buf += b

    def value(self, vtype: int, v) -> None:
        if vtype == STRING:
            self.string(v)
        elif vtype == ARRAY:
            etype, items = v
            self.num("<I", etype)
            self.num("<Q", len(items))
            for x in items:
                self.value(etype, x)
        else:
            self.num(SCALARS[vtype], v, mark=vtype in (U32, U64, I32))


def tensor_nbytes(dims, ttype: int) -> int:
    """Bytes of a tensor of this shape and ggml type."""
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[ttype]
    n = 1
    for d in dims:
        n *= d
    return n // block * size


def gguf_bytes(kvs, tensors=(), *, name: str = "synthetic", n_tensors: int | None = None,
               n_kv: int | None = None, version: int = 3, fill=None) -> Seed:
    """A GGUF file: kvs are (key, value type, value); tensors are (name, dims, ggml type[, data offset]).

    Offsets default to llama.cpp's layout (back to back, each padded to the alignment); `fill(nbytes)` gives
    a tensor's bytes (zeros by default).
    """
    o = _Out()
    o.buf += b"GGUF"
    o.num("<I", version)
    o.num("<Q", len(tensors) if n_tensors is None else n_tensors)
    o.num("<Q", len(kvs) if n_kv is None else n_kv)
    alignment = 32
    for key, vtype, v in kvs:
        o.string(key)
        o.num("<I", vtype)
        o.value(vtype, v)
        if key == "general.alignment" and vtype == U32 and v > 0 and not v & (v - 1):
            alignment = v  # an invalid one is written as asked, the layout keeps the default
    expected, blobs = 0, []
    for t in tensors:
        tname, dims, ttype = t[:3]
        offset = t[3] if len(t) > 3 else expected
        o.string(tname)
        o.num("<I", len(dims))
        for d in dims:
            o.num("<Q", d)
        o.num("<I", ttype)
        o.num("<Q", offset)
        nbytes = tensor_nbytes(dims, ttype)
        blobs.append((offset, fill(nbytes) if fill else bytes(nbytes)))
        expected = offset + -(-nbytes // alignment) * alignment
    header = bytes(o.buf) + bytes(-len(o.buf) % alignment)
    data = bytearray(max((off + len(b) for off, b in blobs), default=0))
    for off, b in blobs:
        data[off:off + len(b)] = b
    return Seed(name, header + bytes(data), o.fields, len(header))


def tiny_llama(n_vocab_words: int = 40, n_embd: int = 32, n_ff: int = 64, fill=None) -> Seed:
    """A complete llama-architecture model that llama.cpp loads: one layer, an SPM vocabulary with byte tokens."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + \
             ["\u2581" + w for w in "the a of and to in is it you that he was for on are as with his they at".split()]
    tokens = tokens[:259 + n_vocab_words]
    n_vocab = len(tokens)
    kvs = [
        ("general.architecture", STRING, "llama"), ("general.name", STRING, "tiny"),
        ("llama.context_length", U32, 128), ("llama.embedding_length", U32, n_embd),
        ("llama.block_count", U32, 1), ("llama.feed_forward_length", U32, n_ff),
        ("llama.rope.dimension_count", U32, n_embd // 2), ("llama.attention.head_count", U32, 2),
        ("llama.attention.head_count_kv", U32, 2), ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        ("general.file_type", U32, 0), ("tokenizer.ggml.model", STRING, "llama"),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
        ("tokenizer.ggml.scores", ARRAY, (F32, [0.0] * 259 + [-float(i) for i in range(n_vocab - 259)])),
        ("tokenizer.ggml.token_type", ARRAY, (I32, [2, 3, 3] + [6] * 256 + [1] * (n_vocab - 259))),
        ("tokenizer.ggml.bos_token_id", U32, 1), ("tokenizer.ggml.eos_token_id", U32, 2),
        ("tokenizer.chat_template", STRING, "{% for m in messages %}{{ m['content'] }}{% endfor %}"),
    ]
    e, f = n_embd, n_ff
    tensors = [("token_embd.weight", [e, n_vocab], T_F32), ("output_norm.weight", [e], T_F32),
               ("output.weight", [e, n_vocab], T_F32), ("blk.0.attn_norm.weight", [e], T_F32),
               ("blk.0.attn_q.weight", [e, e], T_F32), ("blk.0.attn_k.weight", [e, e], T_F32),
               ("blk.0.attn_v.weight", [e, e], T_F32), ("blk.0.attn_output.weight", [e, e], T_F32),
               ("blk.0.ffn_norm.weight", [e], T_F32), ("blk.0.ffn_gate.weight", [e, f], T_F32),
               ("blk.0.ffn_up.weight", [e, f], T_F32), ("blk.0.ffn_down.weight", [f, e], T_F32)]
    return gguf_bytes(kvs, tensors, name="tiny-llama", fill=fill or _small_floats)


def _small_floats(nbytes: int) -> bytes:
    rng = random.Random(nbytes)
    return struct.pack(f"<{nbytes // 4}f", *(rng.uniform(-0.05, 0.05) for _ in range(nbytes // 4)))


def assorted() -> Seed:
    """Every value type, empty and nested-looking values, quantized tensors and a 64-byte alignment."""
    kvs = [("general.architecture", STRING, "llama"), ("general.alignment", U32, 64)]
    kvs += [(f"x.scalar{t}", t, 1) for t in SCALARS]
    kvs += [(f"x.array{t}", ARRAY, (t, [1, 0, 1])) for t in SCALARS]
    kvs += [("x.empty", STRING, ""), ("x.strings", ARRAY, (STRING, ["", "a", "bc" * 20])),
            ("x.none", ARRAY, (U8, [])), ("llama.block_count", U32, 2), ("llama.attention.head_count_kv",
                                                                         ARRAY, (U32, [2, 4]))]
    tensors = [("a", [64, 2], T_F16), ("b", [32, 3], T_Q8_0), ("c", [32], T_Q4_0), ("d", [256, 1, 1, 2], T_Q4_K),
               ("e", [1], T_F32)]
    return gguf_bytes(kvs, tensors, name="assorted")


def synthetic_seeds() -> list[Seed]:
    """Small hand-built seeds: a loadable model, an assortment of types, a minimal file, a tensorless one."""
    return [tiny_llama(), assorted(),
            gguf_bytes([("general.architecture", STRING, "llama")], [("w", [4], T_F32)], name="minimal"),
            gguf_bytes([("tokenizer.ggml.tokens", ARRAY, (STRING, ["a", "b"]))], name="no-tensors")]


# ---------------------------------------------------------------- reading real files independently

@dataclass
class Parsed:
    """What the independent reader found."""

    kvs: list
    tensors: list
    data_offset: int
    fields: list[tuple[int, str]]


def parse_gguf(buf, keep: int | None = None) -> Parsed:
    """An independent reader (not the check under test); raises ValueError or struct.error on anything odd.

    Arrays keep their first `keep` elements when `keep` is set (to cut a real vocabulary down to a seed).
    """
    pos, fields = 0, []

    def take(fmt, mark=True):
        nonlocal pos
        if mark:
            fields.append((pos, fmt))
        v = struct.unpack_from(fmt, buf, pos)[0]
        pos += struct.calcsize(fmt)
        return v

    def string():
        nonlocal pos
        n = take("<Q")
        if pos + n > len(buf):
            raise ValueError("string past the end")
        pos += n
        return bytes(buf[pos - n:pos])

    def value(vtype):
        if vtype == STRING:
            return string()
        if vtype == ARRAY:
            etype, n = take("<I"), take("<Q")
            if etype not in (STRING, *SCALARS) or n > len(buf):
                raise ValueError("bad array")
            items = [value(etype) for _ in range(n)]
            return (etype, items[:keep] if keep is not None else items)
        return take(SCALARS[vtype], mark=vtype in (U32, U64, I32))

    if bytes(buf[:4]) != b"GGUF":
        raise ValueError("magic")
    pos = 4
    take("<I")
    n_tensors, n_kv = take("<Q"), take("<Q")
    kvs = []
    for _ in range(n_kv):
        key, vtype = string().decode(), take("<I")
        kvs.append((key, vtype, value(vtype)))
    tensors = []
    for _ in range(n_tensors):
        name, n_dims = string().decode(), take("<I")
        tensors.append((name, [take("<Q") for _ in range(n_dims)], take("<I"), take("<Q")))
    alignment = next((v for k, t, v in kvs if k == "general.alignment"), 32)
    return Parsed(kvs, tensors, -(-pos // alignment) * alignment, fields)


def real_seeds(path: Path, prefixes=(4096, 32768)) -> list[Seed]:
    """Seeds from a real GGUF: its first few KB as they are, and its metadata (arrays cut to 64) with tiny tensors."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        parsed = parse_gguf(buf, keep=64)
        heads = [bytes(buf[:n]) for n in prefixes]
    kvs = [(k, t, v.decode() if isinstance(v, bytes) else _decoded(v)) for k, t, v in parsed.kvs]
    small = [(name, [min(dims[0], 256)] + [1] * (len(dims) - 1), ttype) for name, dims, ttype, _ in parsed.tensors[:6]]
    return [Seed(f"{path.stem}-head{n // 1024}k", h, [f for f in parsed.fields if f[0] + 8 <= n], n)
            for n, h in zip(prefixes, heads, strict=True)] + [gguf_bytes(kvs, small, name=f"{path.stem}-meta")]


def _decoded(v):
    if isinstance(v, tuple):
        etype, items = v
        return (etype, [x.decode(errors="replace") if isinstance(x, bytes) else x for x in items])
    return v


# ---------------------------------------------------------------- mutating

INTERESTING = [0, 1, 2, 3, 4, 7, 8, 9, 12, 13, 31, 32, 33, 48, 63, 64, 255, 256, 4096, 1 << 16, (1 << 16) + 1,
               1 << 20, 1 << 21, (1 << 21) + 1, 1 << 24, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32,
               (1 << 63) - 1, 1 << 63, (1 << 64) - 1]


def mutate(rng: random.Random, seed: Seed) -> bytes:
    """One to four stacked mutations of a seed: integer fields set to edge values, bit flips, byte edits,
    truncation, chunk deletion, insertion and duplication (which repeats keys and tensor names)."""
    b = bytearray(seed.data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        head = min(seed.header_end or len(b), len(b))  # mutations aim at the header, rarely at the data
        op = rng.random()
        if op < 0.45 and seed.fields:
            pos, fmt = rng.choice(seed.fields)
            width = struct.calcsize(fmt)
            if pos + width > len(b):
                continue
            old = int.from_bytes(b[pos:pos + width], "little")
            v = rng.choice(INTERESTING + [old + 1, old - 1, old * 2, old // 2, len(b), len(b) - pos,
                                          rng.getrandbits(width * 8)])
            b[pos:pos + width] = (v % (1 << (width * 8))).to_bytes(width, "little")
        elif op < 0.65:
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(head if rng.random() < 0.9 else len(b))
                b[i] ^= 1 << rng.randrange(8)
        elif op < 0.72:
            b[rng.randrange(head)] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif op < 0.80:
            del b[rng.randrange(len(b)):]
        elif op < 0.87:
            i = rng.randrange(head)
            del b[i:i + rng.randint(1, 64)]
        elif op < 0.93:
            i = rng.randrange(head)
            b[i:i] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 32)))
        elif head > 25:
            i, j = rng.randrange(24, head), rng.randrange(24, head)
            b[j:j] = b[i:i + rng.randint(8, 256)]
        if len(b) < 4:
            break
    return bytes(b)


def check_bytes(data: bytes):
    """The daemon's path on an in-memory file: the structure check, then the estimate's facts."""
    info = walk_gguf(data, len(data), Path("fuzz.gguf"))
    facts_from_info(info)
    return info


def run_one(data: bytes) -> tuple[str, str, float]:
    """('accepted' | 'refused' | 'mismatch' | 'crash', detail, seconds) for one input.

    'mismatch': accepted, but the independent reader reads the file another way (the check and llama.cpp
    could then disagree on what the file holds); 'crash': any exception other than CorruptModelError.
    """
    t0 = time.perf_counter()
    try:
        info = check_bytes(data)
    except CorruptModelError as exc:
        return "refused", str(exc), time.perf_counter() - t0
    except Exception as exc:  # the property under test: nothing else may escape
        return "crash", f"{type(exc).__name__}: {exc}", time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    return ("mismatch", problem, seconds) if (problem := disagreement(data, info)) else ("accepted", "", seconds)


def disagreement(data: bytes, info) -> str | None:
    """How the independent reader's view of an accepted file differs from the check's, if it does."""
    try:
        parsed = parse_gguf(data)
    except Exception as exc:  # whatever stops the reader on a file the check accepted is a disagreement
        return f"the independent reader fails: {type(exc).__name__}: {exc}"
    if parsed.data_offset != info.meta["data_offset"] or [t[0] for t in parsed.tensors] != [t[0] for t in info.tensors]:
        return "the independent reader finds another layout"
    if len({k for k, _, _ in parsed.kvs}) != len(parsed.kvs):
        return "a key appears twice"
    return None


# ---------------------------------------------------------------- the bounded property test

@pytest.fixture(scope="module")
def seeds(model_files) -> list[Seed]:
    return synthetic_seeds() + real_seeds(model_files["smollm2-135m"]["model"])


def test_seeds_are_valid(seeds):
    # the unmutated seeds that are whole files pass, or the fuzzing below starts from nothing
    whole = [s for s in seeds if "head" not in s.name]
    assert [run_one(s.data)[0] for s in whole] == ["accepted"] * len(whole)
    assert all(run_one(s.data)[0] == "refused" for s in seeds if "head" in s.name)  # cut short: truncated


def test_mutants_are_accepted_or_refused_never_crash(seeds):
    rng = random.Random(20240531)
    counts = {"accepted": 0, "refused": 0, "mismatch": 0, "crash": 0}
    crashes, slow = [], []
    t0 = time.perf_counter()
    for i in range(FUZZ_INPUTS):
        data = mutate(rng, seeds[i % len(seeds)])
        outcome, detail, seconds = run_one(data)
        counts[outcome] += 1
        if outcome in ("crash", "mismatch"):
            crashes.append((seeds[i % len(seeds)].name, detail))
        if seconds > TIME_BOUND_S:
            slow.append((seeds[i % len(seeds)].name, seconds))
    assert not crashes, crashes[:5]
    assert not slow, slow[:5]
    assert counts["accepted"] > 100 and counts["refused"] > 1000, counts  # both sides of the check exercised
    assert time.perf_counter() - t0 < 60
