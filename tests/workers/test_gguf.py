"""Real llama.cpp inference on SmolLM2-135M through the GGUF backend."""

import shutil

import pytest

from swarm_edge.config import DEFAULT_CONFIG
from swarm_edge.errors import CorruptModelError, InferenceError
from swarm_edge.registry import load_registry
from swarm_edge.workers import GenerateRequest, open_backend

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def spec():
    return load_registry(DEFAULT_CONFIG).get("smollm2-135m")


@pytest.fixture(scope="module")
def smol(spec, model_files):
    backend = open_backend(spec, model_files["smollm2-135m"], threads=2)
    yield backend
    backend.close()


def run(backend, request):
    events = list(backend.generate(request))
    tokens = [e["text"] for e in events if e["type"] == "token"]
    assert events[-1]["type"] == "done" and all(e["type"] == "token" for e in events[:-1])
    return "".join(tokens), tokens, events[-1]


def test_chat_uses_the_models_template(smol):
    assert smol.kind == "chat"
    text, tokens, done = run(smol, GenerateRequest(
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        max_tokens=16))
    assert "Paris" in text
    assert "<|im_start|>" not in text and "<|im_end|>" not in text  # template tokens are not leaked
    assert done["finish_reason"] in ("stop", "length") and done["ttft_s"] > 0


def test_streaming_yields_token_by_token(smol):
    text, tokens, done = run(smol, GenerateRequest(
        messages=[{"role": "user", "content": "Count from one to ten in words."}], max_tokens=24))
    assert len(tokens) >= 8 and done["chunks"] == len(tokens)
    assert done["decode_tok_s"] and done["decode_tok_s"] > 1


def test_each_generation_frees_its_sampler_at_once(smol):
    """llama-cpp-python builds a sampler chain per generation and drops the last one in a reference cycle, holding
    llama.cpp's candidates buffer (n_vocab x 12 B) until the cyclic collector runs: a worker's RSS, and so the PSS
    the budget counts, grew 1.8 MiB a request on the 1.5B. With the collector off, no chain may be left unfreed,
    whether a generation ends, stops at a stop string, or is abandoned by its reader (a client gone)."""
    import gc

    from llama_cpp._internals import LlamaSampler

    def unfreed() -> int:
        return sum(1 for o in gc.get_objects() if isinstance(o, LlamaSampler) and o.sampler is not None)

    gc.collect()
    gc.disable()
    try:
        before = unfreed()
        for i in range(6):
            run(smol, GenerateRequest(messages=[{"role": "user", "content": f"Name a colour. ({i})"}], max_tokens=6,
                                      stop=["\n"] if i % 2 else []))
        abandoned = smol.generate(GenerateRequest(messages=[{"role": "user", "content": "Count to ten."}],
                                                  max_tokens=20))
        assert next(abandoned)["type"] == "token"
        abandoned.close()
        assert smol.llm._sampler is None and unfreed() == before, unfreed()
    finally:
        gc.enable()


def test_greedy_is_deterministic_when_the_prompt_is_evaluated_afresh(smol):
    req = GenerateRequest(prompt="The three primary colours are", max_tokens=12, cache_prompt=False)
    first = run(smol, req)[0]
    run(smol, GenerateRequest(prompt="Something else entirely, to leave another cache state", max_tokens=6))
    assert run(smol, req)[0] == first and run(smol, req)[0] == first


def test_completion_and_length_limit(smol):
    text, tokens, done = run(smol, GenerateRequest(prompt="Once upon a time", max_tokens=5))
    assert done["finish_reason"] == "length" and 1 <= len(tokens) <= 5 and text.strip()


def test_stop_sequence(smol):
    text, _, done = run(smol, GenerateRequest(prompt="1, 2, 3, 4, 5,", max_tokens=30, stop=["8"]))
    assert "8" not in text and done["finish_reason"] == "stop"


def test_prompt_longer_than_context_is_a_clear_error(spec, model_files):
    b = open_backend(spec.model_copy(update={"n_ctx": 64}), model_files["smollm2-135m"], threads=2)
    try:
        with pytest.raises(InferenceError, match="context|tokens"):
            run(b, GenerateRequest(prompt="word " * 500, max_tokens=4))
    finally:
        b.close()


def test_close_is_idempotent(spec, model_files):
    b = open_backend(spec, model_files["smollm2-135m"], threads=1)
    b.close()
    b.close()
    with pytest.raises(InferenceError, match="closed"):
        next(iter(b.generate(GenerateRequest(prompt="x"))))


def test_truncated_gguf_is_refused_before_llama_cpp(spec, model_files, tmp_path):
    cut = tmp_path / "cut.gguf"
    with open(model_files["smollm2-135m"]["model"], "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(60_000_000))
    with pytest.raises(CorruptModelError, match="truncated"):
        open_backend(spec, {"model": cut}, threads=1)


def test_garbage_with_gguf_magic_is_refused(spec, model_files, tmp_path):
    bad = tmp_path / "bad.gguf"
    shutil.copy(model_files["smollm2-135m"]["model"], bad)
    with open(bad, "r+b") as f:
        f.seek(8)
        f.write((2**50).to_bytes(8, "little"))  # tensor count
    with pytest.raises(CorruptModelError, match="implausible"):
        open_backend(spec, {"model": bad}, threads=1)


def test_hostile_chat_template_cannot_run_code(spec, model_files, tmp_path):
    """A GGUF whose chat template tries to escape the Jinja sandbox (CVE-2024-34359) fails cleanly."""
    data = model_files["smollm2-135m"]["model"].read_bytes()
    original = b"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    start = data.index(original)
    end = data.index(b"{% endif %}", data.index(b"add_generation_prompt", start)) + len(b"{% endif %}")
    marker = tmp_path / "pwned"
    evil = f"{{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}}".encode()
    assert len(evil) < end - start
    evil += b" " * (end - start - len(evil))  # same length: every offset in the file stays valid
    bad = tmp_path / "evil.gguf"
    bad.write_bytes(data[:start] + evil + data[end:])
    b = open_backend(spec, {"model": bad}, threads=1)
    try:
        with pytest.raises(InferenceError, match="chat template"):
            run(b, GenerateRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=2))
    finally:
        b.close()
    assert not marker.exists()
