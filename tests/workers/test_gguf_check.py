"""The Python-side GGUF structure check: real files pass; truncated and hostile ones are refused."""

import re
import struct
import time

import pytest

from swarm_edge.errors import CorruptModelError
from swarm_edge.workers.gguf_check import MAX_ARRAY, MAX_STRING_ELEMENTS, check_gguf
from tests.workers.test_gguf_fuzz import ARRAY, I32, STRING, T_F16, T_F32, U8, U32, U64, gguf_bytes


@pytest.fixture(scope="module")
def smol_bytes(model_files):
    return model_files["smollm2-135m"]["model"].read_bytes()


def test_real_file_passes(model_files):
    meta = check_gguf(model_files["smollm2-135m"]["model"])
    assert meta["general.architecture"] == "llama"
    assert meta["n_vocab"] == 49152 and meta["llama.block_count"] == 30
    assert meta["data_offset"] + meta["tensor_bytes"] == model_files["smollm2-135m"]["model"].stat().st_size
    assert "im_start" in meta["chat_template"]


@pytest.mark.parametrize("keep", [10, 1000, 1_000_000, 50_000_000, -1])
def test_truncated_file_is_refused(smol_bytes, tmp_path, keep):
    p = tmp_path / "cut.gguf"
    p.write_bytes(smol_bytes[:keep])
    with pytest.raises(CorruptModelError, match="truncated|too small|past the end"):
        check_gguf(p)


def patched(smol_bytes, offset, fmt, value):
    b = bytearray(smol_bytes[:4096])
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


@pytest.mark.parametrize("offset,fmt,value,message", [
    (0, "<I", 0x47475546, "magic"),                    # "FUGG"
    (4, "<I", 99, "version"),
    (8, "<Q", 2**62, "implausible counts"),            # tensor count
    (16, "<Q", 2**40, "implausible counts"),           # metadata count
    (24, "<Q", 2**60, "claims"),                       # first key's length
])
def test_hostile_header_is_refused(smol_bytes, tmp_path, offset, fmt, value, message):
    p = tmp_path / "evil.gguf"
    p.write_bytes(patched(smol_bytes, offset, fmt, value))
    with pytest.raises(CorruptModelError, match=message):
        check_gguf(p)


def test_not_a_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_text("<html>404 not found</html>" * 10)
    with pytest.raises(CorruptModelError, match="magic"):
        check_gguf(p)


# ---------------------------------------------------------------- hand-built files: what llama.cpp refuses or chokes on

BASE = [("general.architecture", STRING, "llama"), ("llama.block_count", U32, 2)]
ONE = [("w", [32], T_F32)]


def write(tmp_path, kvs, tensors=ONE, **kw):
    p = tmp_path / "built.gguf"
    p.write_bytes(gguf_bytes(kvs, tensors, **kw).data)
    return p


def test_built_file_passes(tmp_path):
    meta = check_gguf(write(tmp_path, BASE + [("general.alignment", U32, 64)], ONE + [("v", [32, 2], T_F16)]))
    assert meta["llama.block_count"] == 2 and meta["general.alignment"] == 64 and meta["n_tensors"] == 2
    assert meta["data_offset"] % 64 == 0 and meta["tensor_bytes"] == 32 * 4 + 64 * 2


def test_empty_tokens_are_distinct(tmp_path):
    # llama.cpp names an empty token "[EMPTY_<id>]", so several empty tokens do not collide
    meta = check_gguf(write(tmp_path, BASE + [("tokenizer.ggml.tokens", ARRAY, (STRING, ["", "", "x"]))]))
    assert meta["n_vocab"] == 3


@pytest.mark.parametrize("kvs,tensors,message", [
    (BASE + [("llama.block_count", U32, 3)], ONE, "key 'llama.block_count' appears twice"),
    (BASE, ONE + [("w", [32], T_F32)], "tensor name 'w' appears twice"),
    (BASE + [("general.alignment", U64, 32)], ONE, "general.alignment has value type 10, not u32"),
    (BASE + [("general.alignment", I32, 32)], ONE, "general.alignment has value type 5, not u32"),
    (BASE + [("general.alignment", STRING, "32")], ONE, "general.alignment has value type 8, not u32"),
    (BASE + [("general.alignment", U32, 0)], ONE, "general.alignment 0 is not a power of two"),
    (BASE + [("general.alignment", U32, 48)], ONE, "general.alignment 48 is not a power of two"),
    (BASE + [("", U32, 1)], ONE, "a metadata key is empty"),
    (BASE + [("k" * 2000, U32, 1)], ONE, "metadata key claims 2,000 bytes"),
    # C strings in llama.cpp: it would read "llama.block_count" here, the check (and the estimate) something else
    (BASE + [("llama.block_count\0x", U32, 99)], ONE, "metadata key holds a NUL byte"),
    ([("general.architecture", STRING, "llama\0x")], ONE, "general.architecture holds a NUL byte"),
    (BASE, [("w\0", [32], T_F32)], "tensor name holds a NUL byte"),
    (BASE, [("n" * 64, [32], T_F32)], "tensor name claims 64 bytes"),  # llama.cpp: GGML_MAX_NAME is 64 with the NUL
    (BASE, ONE + [("gap", [32], T_F32, 256)], "tensor gap is at data offset 256; llama.cpp expects 128"),
    (BASE, [("b", [32], T_F32, 128), ("a", [32], T_F32, 0)], "tensor b is at data offset 128; llama.cpp expects 0"),
    (BASE, [("a", [32], T_F32), ("b", [32], T_F32, 96)], "tensor b is at data offset 96"),  # overlaps a
    # a scalar where the vocabulary belongs: the walk used to skip reading its value and lose its place
    (BASE + [("tokenizer.ggml.tokens", U64, 7)], ONE, "tokenizer.ggml.tokens is not an array of strings"),
    (BASE + [("tokenizer.ggml.tokens", ARRAY, (U32, [1, 2]))], ONE, "not an array of strings"),
    # llama.cpp maps token text to id and aborts the process (GGML_ASSERT) when two tokens share a text
    (BASE + [("tokenizer.ggml.tokens", ARRAY, (STRING, ["a", "b", "a"]))], ONE,
     "tokenizer.ggml.tokens element 2 repeats an earlier token (b'a'): llama.cpp aborts on that"),
    (BASE + [("tokenizer.ggml.tokens", ARRAY, (STRING, ["", "[EMPTY_0]"]))], ONE, "element 1 repeats"),
    (BASE + [("tokenizer.ggml.tokens", ARRAY, (STRING, ["a", "a\0b"]))], ONE, "element 1 repeats"),  # a C string
])
def test_what_llama_cpp_refuses_is_refused_first(tmp_path, kvs, tensors, message):
    with pytest.raises(CorruptModelError, match=re.escape(message)) as err:
        check_gguf(write(tmp_path, kvs, tensors))
    assert "built.gguf" in str(err.value)  # the message names the file


# ---------------------------------------------------------------- caps: counts real models stay far below

def test_huge_string_array_is_refused_before_walking_it(tmp_path):
    # 2 Mi + 1 empty strings: 16 MiB in the file, about 3.4 GB of numpy views in GGUFReader (1.6 KB each, measured)
    n = MAX_ARRAY + 1
    p = tmp_path / "strings.gguf"
    p.write_bytes(_array_file(STRING, n, b"\0" * 8 * n))
    t0 = time.perf_counter()
    with pytest.raises(CorruptModelError, match=f"claims {n:,} elements"):
        check_gguf(p)
    assert time.perf_counter() - t0 < 0.05


def test_string_elements_are_capped_for_the_whole_file(tmp_path):
    half = MAX_STRING_ELEMENTS // 2 + 1
    p = tmp_path / "two.gguf"
    p.write_bytes(_array_file(STRING, half, b"\0" * 8 * half, copies=2))
    with pytest.raises(CorruptModelError, match="string arrays hold more than"):
        check_gguf(p)


def test_huge_numeric_array_is_refused(tmp_path):
    n = MAX_ARRAY + 1
    p = tmp_path / "bytes.gguf"
    p.write_bytes(_array_file(U8, n, bytes(n)))
    with pytest.raises(CorruptModelError, match=f"claims {n:,} elements"):
        check_gguf(p)


def test_largest_allowed_arrays_are_walked_quickly(tmp_path):
    p = tmp_path / "big.gguf"
    p.write_bytes(_array_file(STRING, MAX_ARRAY, b"\0" * 8 * MAX_ARRAY))
    t0 = time.perf_counter()
    assert check_gguf(p)["n_tensors"] == 0
    assert time.perf_counter() - t0 < 5  # ~0.4 s: one length read per element, bounded by the caps
    p.write_bytes(_array_file(U64, MAX_ARRAY, bytes(8 * MAX_ARRAY)))
    t0 = time.perf_counter()
    check_gguf(p)
    assert time.perf_counter() - t0 < 0.05  # numeric arrays are stepped over arithmetically


@pytest.mark.parametrize("what", ["kv", "tensors"])
def test_counts_over_the_caps_are_refused(tmp_path, what):
    n = 70_000  # real files: tens of keys, hundreds to a few thousand tensors
    if what == "kv":
        seed = gguf_bytes([(f"k{i}", U8, 0) for i in range(n)], ONE)
    else:
        seed = gguf_bytes(BASE, [(f"t{i}", [1], T_F32) for i in range(n)])
    p = tmp_path / "many.gguf"
    p.write_bytes(seed.data)
    with pytest.raises(CorruptModelError, match="implausible counts"):
        check_gguf(p)


def _array_file(etype, count, payload, copies=1) -> bytes:
    """A tensorless GGUF whose metadata is `copies` arrays of `count` elements (payload given raw)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, 0, copies)
    for i in range(copies):
        key = f"x.array{i}".encode()
        out += struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", ARRAY, etype, count) + payload
    return out


def test_the_check_does_not_import_numpy_and_loads_its_constants_once_across_threads(model_files):
    """The daemon checks every GGUF it loads; `import gguf` would import numpy there (~10 MiB of PSS, for good), so
    the check loads only gguf/constants.py. Routing threads check files at once: the first one found the module
    half-executed (AttributeError, a 500) until the load was locked."""
    import subprocess
    import sys

    code = ("import sys, threading\n"
            "from swarm_edge.workers.gguf_check import check_gguf\n"
            "out = []\n"
            "def one(): out.append(check_gguf(sys.argv[1])['n_vocab'])\n"
            "threads = [threading.Thread(target=one) for _ in range(8)]\n"
            "[t.start() for t in threads]; [t.join() for t in threads]\n"
            "print(out, 'numpy' in sys.modules, 'gguf' in sys.modules)\n")
    for _ in range(3):
        run = subprocess.run([sys.executable, "-c", code, str(model_files["smollm2-135m"]["model"])],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == f"{[49152] * 8} False False", (run.stdout, run.stderr)
