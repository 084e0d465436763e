"""Footprint: the formula's parts on the real SmolLM2 file, and the calibration store."""

import pytest

from swarm_edge.footprint import CALIBRATED_MARGIN, FootprintStore, estimate, gguf_facts, gguf_formula

MiB = 2**20


@pytest.fixture(scope="module")
def smol_facts(model_files):
    return gguf_facts(model_files["smollm2-135m"]["model"])


def test_facts_from_the_gguf_library(smol_facts, model_files):
    assert smol_facts["architecture"] == "llama"
    assert (smol_facts["n_layer"], smol_facts["n_head_kv"], smol_facts["head_dim_k"]) == (30, 3, 64)
    assert smol_facts["n_vocab"] == 49152
    assert smol_facts["repacked_bytes"] == 0  # Q4_1 weights are not repacked by ggml-cpu
    assert smol_facts["file_bytes"] == model_files["smollm2-135m"]["model"].stat().st_size


def test_formula_matches_llama_cpp_buffers(smol_facts):
    # llama.cpp reports for this file at n_ctx 2048: KV 45.00 MiB; compute 49.69 MiB (n_batch 256), 99.38 (512)
    p256 = gguf_formula(smol_facts, 2048, 256)
    assert p256["kv_cache"] == 45 * MiB
    assert 49.6 * MiB <= p256["compute"] <= 56 * MiB  # an upper bound, a few MiB over
    p512 = gguf_formula(smol_facts, 2048, 512)
    assert 99.3 * MiB <= p512["compute"] <= 108 * MiB
    assert gguf_formula(smol_facts, 1024, 256)["kv_cache"] == 22.5 * MiB


def test_store_keeps_worst_peak_and_estimate_uses_it(tmp_path):
    store = FootprintStore(tmp_path)
    key = store.key("ab" * 32, 2048, 256)
    assert store.calibrated(key) is None
    assert store.record(key, 200 * MiB) and not store.record(key, 150 * MiB)
    assert store.record(key, 210 * MiB)
    assert FootprintStore(tmp_path).calibrated(key) == 210 * MiB  # persisted
    parts = {"weights": 300 * MiB}
    assert estimate(parts, None).bytes == 300 * MiB and estimate(parts, None).source == "formula"
    e = estimate(parts, 210 * MiB)
    assert e.source == "calibrated" and e.bytes == int(210 * MiB * CALIBRATED_MARGIN)


def test_facts_are_cached_per_sha(tmp_path, model_files):
    store = FootprintStore(tmp_path)
    sha = "cd" * 32
    first = store.facts(sha, model_files["smollm2-135m"]["model"])
    assert (tmp_path / "footprint" / f"{sha}.json").exists()
    from swarm_edge import footprint

    footprint._FACTS_MEMO.clear()  # force the on-disk cache to answer
    assert FootprintStore(tmp_path).facts(sha, tmp_path / "not-read-again.gguf") == first
