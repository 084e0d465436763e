"""Real onnxruntime embeddings with all-MiniLM-L6-v2 (int8) and its real tokenizer."""

import math

import pytest

from swarm_edge.errors import CorruptModelError, InferenceError, ModelLoadError
from swarm_edge.workers import GenerateRequest, open_backend

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def minilm(model_files):
    from swarm_edge.config import DEFAULT_CONFIG
    from swarm_edge.registry import load_registry

    spec = load_registry(DEFAULT_CONFIG).get("minilm-l6")
    backend = open_backend(spec, model_files["minilm-l6"], threads=2)
    yield backend
    backend.close()


def cos(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embeddings_are_normalised_and_semantic(minilm):
    texts = ["How do I bake bread at home?", "What is a good recipe for homemade bread?",
             "The stock market fell sharply on Monday.", "Write a Python function to sort a list."]
    vecs = minilm.embed(texts)
    assert len(vecs) == 4 and all(len(v) == 384 for v in vecs)
    assert all(abs(math.sqrt(cos(v, v)) - 1) < 1e-4 for v in vecs)
    assert cos(vecs[0], vecs[1]) > 0.6  # paraphrases
    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2]) + 0.3
    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[3]) + 0.3


def test_padding_does_not_change_a_vector(minilm):
    short = "Hello."
    alone = minilm.embed([short])[0]
    batched = minilm.embed([short, "a much longer sentence that forces padding of the short one " * 3])[0]
    assert max(abs(a - b) for a, b in zip(alone, batched, strict=True)) < 1e-4


def test_long_input_is_truncated_not_an_error(minilm):
    assert len(minilm.embed(["word " * 5000])[0]) == 384


def test_generate_is_refused(minilm):
    with pytest.raises(InferenceError, match="embedding model"):
        next(iter(minilm.generate(GenerateRequest(prompt="hi"))))


def test_close_is_idempotent(model_files):
    from swarm_edge.config import DEFAULT_CONFIG
    from swarm_edge.registry import load_registry

    b = open_backend(load_registry(DEFAULT_CONFIG).get("minilm-l6"), model_files["minilm-l6"], threads=1)
    b.close()
    b.close()
    with pytest.raises(InferenceError, match="closed"):
        b.embed(["x"])


def test_corrupt_onnx_and_tokenizer(model_files, tmp_path):
    from swarm_edge.config import DEFAULT_CONFIG
    from swarm_edge.registry import load_registry

    spec = load_registry(DEFAULT_CONFIG).get("minilm-l6")
    bad_model = tmp_path / "model.onnx"
    bad_model.write_bytes(model_files["minilm-l6"]["model"].read_bytes()[:100_000])
    with pytest.raises(ModelLoadError, match="onnxruntime could not load"):
        open_backend(spec, {"model": bad_model, "tokenizer": model_files["minilm-l6"]["tokenizer"]}, threads=1)
    bad_tok = tmp_path / "tokenizer.json"
    bad_tok.write_text("{not json")
    with pytest.raises(CorruptModelError, match="tokenizer"):
        open_backend(spec, {"model": model_files["minilm-l6"]["model"], "tokenizer": bad_tok}, threads=1)
