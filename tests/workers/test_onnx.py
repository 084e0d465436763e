"""The ONNX backend: real embeddings with all-MiniLM-L6-v2 (int8) and its real tokenizer, and bad files refused at
load (hand-built tiny models and tokenizers, built here and by the fuzz test) with errors that name them."""

import json
import math
import random
import struct

import pytest

from swarm_edge.errors import CorruptModelError, InferenceError, ModelLoadError
from swarm_edge.workers import GenerateRequest, open_backend
from swarm_edge.workers.onnx import MAX_TOKENIZER_BYTES, PROBE, ONNXBackend

FLOAT, INT64, BOOL = 1, 7, 9  # ONNX TensorProto data types


# ---------------------------------------------------------------- writing protobuf and ONNX by hand

def varint(n: int) -> bytes:
    """Protobuf's base-128 varint of n (negative numbers as their 64-bit two's complement)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def vi(field: int, n: int) -> bytes:
    return varint(field << 3) + varint(n)


def ld(field: int, body: bytes | str) -> bytes:
    body = body.encode() if isinstance(body, str) else body
    return varint(field << 3 | 2) + varint(len(body)) + body


def tensor(name: str, dims, data: bytes | None, external: str | None = None, dtype: int = FLOAT) -> bytes:
    """A TensorProto with raw_data, or pointing at an external file."""
    body = b"".join(vi(1, d) for d in dims) + vi(2, dtype) + ld(8, name)
    if external is not None:
        return body + ld(13, ld(1, "location") + ld(2, external)) + vi(14, 1)
    return body + ld(9, data)


def value_info(name: str | bytes, elem: int, dims) -> bytes:
    """A ValueInfoProto; dims are ints or symbolic names, None leaves the shape out."""
    tensor_type = vi(1, elem)
    if dims is not None:
        tensor_type += ld(2, b"".join(ld(1, vi(1, d) if isinstance(d, int) else ld(2, d)) for d in dims))
    return ld(1, name) + ld(2, ld(1, tensor_type))


def node(op: str, inputs, outputs, attrs: bytes = b"") -> bytes:
    return (b"".join(ld(1, i) for i in inputs) + b"".join(ld(2, o) for o in outputs) + ld(3, f"{op}_{outputs[0]}")
            + ld(4, op) + attrs)


def tiny_model(vocab: int = 64, dim: int = 8, *, external: str | None = None, extra_input: str | None = None,
               output_dims="default", input_name: str | bytes = "input_ids", gamma: float = 1.0, beta: float = 0.0,
               fixed_batch: int | None = None, combine=("Add", ("e0", "e1")),
               norm_inputs=("h", "gamma", "beta"), loop_trips: int | None = None) -> bytes:
    """A BERT-shaped embedding graph onnxruntime loads in milliseconds: word + token-type embeddings, added
    (`combine`: op, inputs and optionally attributes), a MatMul and a LayerNormalization (`norm_inputs`), fed
    input_ids, attention_mask (unused) and token_type_ids; `fixed_batch` adds a Reshape to (fixed_batch, -1, dim)
    at the end, as a damaged shape constant would, `loop_trips` a Loop that passes the vectors through unchanged
    that many times."""
    rng = random.Random(vocab * dim)

    def floats(n, value=None):
        return struct.pack(f"<{n}f", *(rng.uniform(-1, 1) if value is None else value for _ in range(n)))

    inits = [tensor("word", [vocab, dim], floats(vocab * dim), external), tensor("types", [2, dim], floats(2 * dim)),
             tensor("w", [dim, dim], floats(dim * dim)), tensor("gamma", [dim], floats(dim, gamma)),
             tensor("beta", [dim], floats(dim, beta))]
    epsilon = varint(2 << 3 | 5) + struct.pack("<f", 1e-5)  # AttributeProto.f is a fixed32 float
    norm_attrs = ld(5, ld(1, "axis") + vi(20, 2) + vi(3, -1)) + ld(5, ld(1, "epsilon") + vi(20, 1) + epsilon)
    nodes = [node("Gather", ["word", input_name], ["e0"]), node("Gather", ["types", "token_type_ids"], ["e1"]),
             node(combine[0], combine[1], ["e2"], *combine[2:]), node("MatMul", ["e2", "w"], ["h"]),
             node("LayerNormalization", norm_inputs, ["last_hidden_state"], norm_attrs)]
    if loop_trips is not None:
        nodes[-1] = node("LayerNormalization", norm_inputs, ["normed"], norm_attrs)
        body = (ld(1, node("Identity", ["cond_in"], ["cond_out"])) + ld(1, node("Identity", ["v_in"], ["v_out"]))
                + ld(2, "body") + ld(11, value_info("i", INT64, [])) + ld(11, value_info("cond_in", BOOL, []))
                + ld(11, value_info("v_in", FLOAT, None)) + ld(12, value_info("cond_out", BOOL, []))
                + ld(12, value_info("v_out", FLOAT, None)))
        nodes.append(node("Loop", ["trips", "", "normed"], ["last_hidden_state"], ld(5, ld(1, "body") + vi(20, 5)
                                                                                    + ld(6, body))))
        inits.append(tensor("trips", [], struct.pack("<q", loop_trips), dtype=INT64))
    if fixed_batch is not None:
        nodes[-1] = node("LayerNormalization", norm_inputs, ["normed"], norm_attrs)
        nodes.append(node("Reshape", ["normed", "shape"], ["last_hidden_state"]))
        inits.append(tensor("shape", [3], struct.pack("<3q", fixed_batch, -1, dim), dtype=INT64))
    inputs = [input_name, "attention_mask", "token_type_ids"] + ([extra_input] if extra_input else [])
    graph = b"".join(ld(1, n) for n in nodes) + ld(2, "tiny") + b"".join(ld(5, t) for t in inits)
    graph += b"".join(ld(11, value_info(name, INT64, ["batch", "sequence"])) for name in inputs)
    out_dims = ["batch", "sequence", dim] if output_dims == "default" else output_dims
    graph += ld(12, value_info("last_hidden_state", FLOAT, out_dims))
    return vi(1, 8) + ld(2, "swarm-edge-tests") + ld(7, graph) + ld(8, vi(2, 17))


WORDS = "hello world a second longer sentence that pads the first one probe test".split()


def tiny_tokenizer(*, unk: str = "[UNK]", extra_vocab: dict[str, int] | None = None) -> dict:
    """A tokenizer.json shaped like all-MiniLM-L6-v2's (BERT WordPiece) over a small vocabulary: specials, some
    words, and every ASCII letter and digit alone and as a ##continuation, so any ASCII text encodes."""
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
    for piece in [*WORDS, *alnum, *("##" + c for c in alnum), *".,:!?'"]:
        vocab.setdefault(piece, len(vocab))
    vocab.update(extra_vocab or {})
    special = [{"id": vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": True} for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")]

    def template(*parts):
        return [{"SpecialToken" if p.startswith("[") else "Sequence": {"id": p, "type_id": t}} for p, t in parts]

    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": special,
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
                           "single": template(("[CLS]", 0), ("A", 0), ("[SEP]", 0)),
                           "pair": template(("[CLS]", 0), ("A", 0), ("[SEP]", 0), ("B", 1), ("[SEP]", 1)),
                           "special_tokens": {t: {"id": t, "ids": [vocab[t]], "tokens": [t]}
                                              for t in ("[CLS]", "[SEP]")}},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": unk, "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab},
    }


def tiny_vocab_size(tokenizer: dict | None = None) -> int:
    """Rows the tiny model needs for every id of the (tiny) tokenizer."""
    return max((tokenizer or tiny_tokenizer())["model"]["vocab"].values()) + 1


def load_tiny(tmp_path, model: bytes | None = None, tokenizer: dict | bytes | None = None) -> ONNXBackend:
    """An ONNXBackend on tmp_path/model.onnx and tmp_path/tokenizer.json (the tiny ones unless given)."""
    (tmp_path / "model.onnx").write_bytes(tiny_model(tiny_vocab_size()) if model is None else model)
    tok = tiny_tokenizer() if tokenizer is None else tokenizer
    (tmp_path / "tokenizer.json").write_bytes(tok if isinstance(tok, bytes) else json.dumps(tok).encode())
    return ONNXBackend(str(tmp_path / "model.onnx"), options={"tokenizer": str(tmp_path / "tokenizer.json")})


# ---------------------------------------------------------------- bad files, refused at load

def test_the_tiny_model_embeds(tmp_path):
    vecs = load_tiny(tmp_path).embed(["hello world", "a second longer sentence"])
    assert [len(v) for v in vecs] == [8, 8] and all(abs(sum(x * x for x in v) - 1) < 1e-4 for v in vecs)


def test_external_data_is_refused_even_inside_the_working_directory(tmp_path, monkeypatch):
    # onnxruntime resolves a model-from-bytes' external data against the process's working directory (the
    # daemon's): a model naming "weights.bin" loaded that file as its word embeddings
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "weights.bin").write_bytes(bytes(4 * tiny_vocab_size() * 8))
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(CorruptModelError, match=r"model\.onnx: .*tensor 'word' .*keeps its data in an external file"):
        load_tiny(tmp_path, tiny_model(tiny_vocab_size(), external="weights.bin"))


def test_truncated_model_is_refused_before_onnxruntime_reads_it(tmp_path):
    data = tiny_model(tiny_vocab_size())
    with pytest.raises(CorruptModelError, match=r"model\.onnx: not a valid ONNX model: model\.graph is [\d,]+ bytes "
                                                r"long but only [\d,]+ bytes of model follow: truncated\?"):
        load_tiny(tmp_path, data[:len(data) // 2])


def test_non_utf8_name_is_refused_without_noise_on_stdout(tmp_path, capfd):
    # onnxruntime failed on it in Python, printed "EP Error ... Falling back" to stdout and loaded it again
    with pytest.raises(CorruptModelError, match=r"model\.onnx: .*a name in model\.graph\.node\[0\] is not UTF-8"):
        load_tiny(tmp_path, tiny_model(tiny_vocab_size(), input_name=b"input\xff_ids"))
    assert capfd.readouterr().out == ""


def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path):
    graph = b""
    for _ in range(400):  # graph > node > attribute > graph ... (protobuf itself stops at 100 messages)
        graph = ld(1, ld(5, ld(1, "g") + vi(20, 5) + ld(6, graph)))
    with pytest.raises(CorruptModelError, match="nest more than 32 deep"):
        load_tiny(tmp_path, vi(1, 8) + ld(7, graph) + ld(8, vi(2, 17)))


def test_a_graph_input_the_backend_cannot_feed_is_refused_at_load(tmp_path):
    # it loaded, and every embedding failed: "Required inputs (['position_ids']) are missing"
    with pytest.raises(ModelLoadError, match=r"model\.onnx: graph needs inputs \['position_ids'\]"):
        load_tiny(tmp_path, tiny_model(tiny_vocab_size(), extra_input="position_ids"))


def test_an_output_declared_without_dims_gets_its_dim_from_the_probe(tmp_path):
    # the dim was read from the declared shape: an IndexError when it has none (the graph makes rank 3 anyway)
    backend = load_tiny(tmp_path, tiny_model(tiny_vocab_size(), output_dims=[]))
    assert backend.dim == 8 and len(backend.embed(["hello"])[0]) == 8


def test_a_graph_that_runs_at_one_batch_size_only_is_refused_at_load(tmp_path):
    # found by fuzzing (a Reshape's shape constant set to 1): a one-text probe passed, and batches of two failed
    # or came out as one row of the wrong length
    with pytest.raises(ModelLoadError, match=r"model\.onnx: the graph's first output for 2 x 3 token ids is "
                                             r"\(1, 6, 8\) float32, not float \(batch, tokens, dim\)"):
        load_tiny(tmp_path, tiny_model(tiny_vocab_size(), fixed_batch=1))


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_weights_that_give_every_text_one_vector_are_refused_at_load(tmp_path, beta):
    # a zero LayerNorm scale (the campaign's flipped bits made it ~1e-40): every text became the zero vector (or
    # beta), normalised to garbage, and the router would have routed on it
    with pytest.raises(ModelLoadError, match=r"model\.onnx: the graph gives two different texts the same vector"):
        load_tiny(tmp_path, tiny_model(tiny_vocab_size(), gamma=0.0, beta=beta))


def test_weights_that_make_nan_are_refused_at_load(tmp_path):
    # it loaded and embedded every text to NaN, silently
    with pytest.raises(ModelLoadError, match=r"model\.onnx: .*not finite"):
        load_tiny(tmp_path, tiny_model(tiny_vocab_size(), gamma=float("nan")))


def test_a_tokenizer_without_its_unknown_token_is_refused_at_load(tmp_path):
    # it loaded; then any unknown word raised a bare Exception ("Missing [UNK] token") out of embed
    with pytest.raises(CorruptModelError, match=r"tokenizer\.json: cannot tokenize a test sentence: .*Missing"):
        load_tiny(tmp_path, tokenizer=tiny_tokenizer(unk="[NOT-THERE]"))


def test_a_tokenizer_that_panics_is_refused_at_load(tmp_path):
    # a template naming a special token it does not define loads, then panics in Rust on every encode: pyo3's
    # PanicException is a BaseException, which flew past every `except Exception` out of embed (found by fuzzing)
    tok = tiny_tokenizer()
    tok["post_processor"]["single"][0]["SpecialToken"]["id"] = "[NOT-DEFINED]"
    with pytest.raises(CorruptModelError, match=r"tokenizer\.json: cannot tokenize a test sentence: no entry found"):
        load_tiny(tmp_path, tokenizer=tok)


def test_a_tokenizer_that_drops_the_text_is_refused_at_load(tmp_path):
    # a template without the text's place: every text became [CLS] [SEP], one vector for all, and the error
    # blamed the model's weights (found by the campaign)
    tok = tiny_tokenizer()
    del tok["post_processor"]["single"][1]
    with pytest.raises(CorruptModelError, match=r"tokenizer\.json: gives two different texts the same tokens "
                                                r"\[2, 3\]: the text is lost"):
        load_tiny(tmp_path, tokenizer=tok)


def test_a_tokenizer_that_gives_no_tokens_is_refused_at_load(tmp_path):
    # no template, and a normalizer that erases the probe sentence (but not "hello"): a batch of no tokens, whose
    # vector was the mean of nothing (NaN), and it loaded
    tok = tiny_tokenizer()
    tok["post_processor"] = None
    tok["normalizer"] = {"type": "Replace", "pattern": {"Regex": "^Probe[\\s\\S]*"}, "content": ""}
    with pytest.raises(CorruptModelError, match=r"tokenizer\.json: gives no tokens at all for a test sentence"):
        load_tiny(tmp_path, tokenizer=tok)


def test_a_token_id_beyond_the_model_is_refused_at_load(tmp_path):
    # it loaded; then every text containing "zebra" failed inside onnxruntime's Gather
    tok = tiny_tokenizer(extra_vocab={"zebra": 5000})
    with pytest.raises(ModelLoadError, match=r"model\.onnx \(with tokenizer\.json\): cannot embed 2 x 3 token ids "
                                             r"\(largest 5000\): onnxruntime failed: .*Gather"):
        load_tiny(tmp_path, tiny_model(tiny_vocab_size()), tok)


def test_a_tokenizer_over_the_size_cap_is_refused_unread(tmp_path):
    text = json.dumps(tiny_tokenizer()).encode()
    with pytest.raises(CorruptModelError, match=r"tokenizer\.json: over 64 MiB"):
        load_tiny(tmp_path, tokenizer=text + b" " * (MAX_TOKENIZER_BYTES + 1 - len(text)))


def test_a_tokenizer_failure_at_embed_is_an_inference_error(tmp_path):
    # no unknown token, but the probe sentence's odd characters are in the vocabulary: loading passes, and a
    # text with another unknown character fails in embed as an InferenceError, not a bare Exception
    probe_chars = {c for c in PROBE.lower() if not c.isascii() and c not in "éö"}
    first = tiny_vocab_size()
    tok = tiny_tokenizer(unk="[NOT-THERE]", extra_vocab={c: first + i for i, c in enumerate(sorted(probe_chars))})
    backend = load_tiny(tmp_path, tiny_model(tiny_vocab_size(tok)), tok)
    assert len(backend.embed(["hello"])[0]) == 8
    with pytest.raises(InferenceError, match="the tokenizer failed: .*Missing"):
        backend.embed(["hello ★"])
    with pytest.raises(InferenceError, match="the tokenizer failed"):
        backend.embed_with_prefix("★ hello", 1)


# ---------------------------------------------------------------- the real model

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


@pytest.mark.real_model
def test_embeddings_are_normalised_and_semantic(minilm):
    texts = ["How do I bake bread at home?", "What is a good recipe for homemade bread?",
             "The stock market fell sharply on Monday.", "Write a Python function to sort a list."]
    vecs = minilm.embed(texts)
    assert len(vecs) == 4 and all(len(v) == 384 for v in vecs)
    assert all(abs(math.sqrt(cos(v, v)) - 1) < 1e-4 for v in vecs)
    assert cos(vecs[0], vecs[1]) > 0.6  # paraphrases
    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2]) + 0.3
    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[3]) + 0.3


@pytest.mark.real_model
def test_padding_does_not_change_a_vector(minilm):
    short = "Hello."
    alone = minilm.embed([short])[0]
    batched = minilm.embed([short, "a much longer sentence that forces padding of the short one " * 3])[0]
    assert max(abs(a - b) for a, b in zip(alone, batched, strict=True)) < 1e-4


@pytest.mark.real_model
def test_long_input_is_truncated_not_an_error(minilm):
    assert len(minilm.embed(["word " * 5000])[0]) == 384


@pytest.mark.real_model
def test_generate_is_refused(minilm):
    with pytest.raises(InferenceError, match="embedding model"):
        next(iter(minilm.generate(GenerateRequest(prompt="hi"))))


@pytest.mark.real_model
def test_close_is_idempotent(model_files):
    from swarm_edge.config import DEFAULT_CONFIG
    from swarm_edge.registry import load_registry

    b = open_backend(load_registry(DEFAULT_CONFIG).get("minilm-l6"), model_files["minilm-l6"], threads=1)
    b.close()
    b.close()
    with pytest.raises(InferenceError, match="closed"):
        b.embed(["x"])


@pytest.mark.real_model
def test_corrupt_onnx_and_tokenizer(model_files, tmp_path):
    from swarm_edge.config import DEFAULT_CONFIG
    from swarm_edge.registry import load_registry

    spec = load_registry(DEFAULT_CONFIG).get("minilm-l6")
    bad_model = tmp_path / "model.onnx"
    bad_model.write_bytes(model_files["minilm-l6"]["model"].read_bytes()[:100_000])
    with pytest.raises(CorruptModelError, match=r"model\.onnx: not a valid ONNX model: model\.graph is 22,928,585 "
                                                r"bytes long but only 99,972 bytes of model follow: truncated\?"):
        open_backend(spec, {"model": bad_model, "tokenizer": model_files["minilm-l6"]["tokenizer"]}, threads=1)
    bad_tok = tmp_path / "tokenizer.json"
    bad_tok.write_text("{not json")
    with pytest.raises(CorruptModelError, match=r"tokenizer\.json: not a valid tokenizer\.json"):
        open_backend(spec, {"model": model_files["minilm-l6"]["model"], "tokenizer": bad_tok}, threads=1)
