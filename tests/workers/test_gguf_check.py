"""The Python-side GGUF structure check: real files pass; truncated and hostile ones are refused."""

import struct

import pytest

from swarm_edge.errors import CorruptModelError
from swarm_edge.workers.gguf_check import check_gguf


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
