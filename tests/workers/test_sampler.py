"""Grammar-first sampling (workers/sampler.py), with real llama.cpp on SmolLM2-135M: the same greedy answer as
llama-cpp-python's own grammar sampler, valid under temperature, and the logprob meter still counts one value per
token."""

import json

import jsonschema
import pytest

from swarm_edge.config import DEFAULT_CONFIG
from swarm_edge.registry import load_registry
from swarm_edge.workers import GenerateRequest, open_backend
from swarm_edge.workers.sampler import GrammarFirst, guided_llama

pytestmark = pytest.mark.real_model

SCHEMAS = [
    {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
     "required": ["city", "population"], "additionalProperties": False},
    {"type": "object", "properties": {"colours": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                                                  "maxItems": 3},
                                      "vivid": {"type": "boolean"}},
     "required": ["colours", "vivid"], "additionalProperties": False},
    {"type": "object", "properties": {"person": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 20}, "born": {"type": "string", "format": "date"}},
        "required": ["name", "born"], "additionalProperties": False}},
     "required": ["person"], "additionalProperties": False},
]
PROMPTS = ["Describe Paris as JSON.", "Which colours are in a rainbow? Answer in JSON.",
           "Give a famous person and birthday in JSON."]


@pytest.fixture(scope="module")
def path(model_files):
    return str(model_files["smollm2-135m"]["model"])


@pytest.fixture
def rejections(monkeypatch):
    """Counts, per generation, how often the free choice was rejected (wraps the real sampler; changes nothing)."""
    seen: list[int] = []
    real = GrammarFirst.sample

    def sample(self, ctx, idx=-1):
        token = real(self, ctx, idx)
        seen.append(self.rejections)
        return token

    monkeypatch.setattr(GrammarFirst, "sample", sample)
    return seen


def test_greedy_answers_are_the_ones_llama_cpp_pythons_grammar_sampler_gives(path, rejections):
    from llama_cpp import Llama, LlamaGrammar

    plain = Llama(path, n_ctx=1024, n_threads=2, verbose=False)
    guided = guided_llama()(path, n_ctx=1024, n_threads=2, verbose=False)
    try:
        for schema, prompt in zip(SCHEMAS, PROMPTS, strict=True):
            grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
            texts = []
            for llm in (plain, guided):
                llm.reset()
                out = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], max_tokens=60,
                                                 temperature=0, grammar=grammar)
                texts.append(out["choices"][0]["message"]["content"])
            assert texts[0] == texts[1], schema
    finally:
        plain.close()
        guided.close()
    # the rejection path (the grammar asked about the shortlist) ran, or this test compared nothing interesting
    assert max(rejections) > 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sampled_answers_follow_the_schema(path, seed, rejections):
    spec = load_registry(DEFAULT_CONFIG).get("smollm2-135m")
    backend = open_backend(spec, {"model": path}, threads=2)
    try:
        for schema, prompt in zip(SCHEMAS, PROMPTS, strict=True):
            events = list(backend.generate(GenerateRequest(
                messages=[{"role": "user", "content": prompt}], max_tokens=120, temperature=1.2, seed=seed,
                json_schema=schema)))
            text = "".join(e["text"] for e in events if e["type"] == "token")
            if events[-1]["finish_reason"] == "stop":
                jsonschema.validate(json.loads(text), schema)
    finally:
        backend.close()
    assert max(rejections) > 0  # temperature: rejections are filtered over the whole vocabulary


def test_the_logprob_meter_counts_each_token_once_under_a_grammar(path):
    spec = load_registry(DEFAULT_CONFIG).get("smollm2-135m")
    backend = open_backend(spec, {"model": path}, threads=2)
    try:
        measured, plain = (list(backend.generate(GenerateRequest(
            messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=40, temperature=0, logprobs=logprobs,
            json_schema=SCHEMAS[0], cache_prompt=False))) for logprobs in (True, False))
    finally:
        backend.close()
    done = measured[-1]
    tokens = [e["text"] for e in measured if e["type"] == "token"]
    assert done["mean_logprob"] is not None and done["min_logprob"] <= done["mean_logprob"] <= 0
    assert len(tokens) >= 5
    # measuring watches the logits and changes nothing: the same greedy answer (the shortlist path is taken)
    assert tokens == [e["text"] for e in plain if e["type"] == "token"]


def test_a_step_seen_twice_is_measured_once():
    """Pure logic: on a rejection the chain (and the meter in it) sees the same step again."""
    import numpy as np

    from swarm_edge.workers.gguf import _LogprobMeter

    meter = _LogprobMeter()
    scores = np.log(np.array([0.5, 0.25, 0.25], dtype=np.float32))
    meter([7], scores)
    meter([7], np.array([-np.inf, 0.0, -np.inf], dtype=np.float32))  # the same step, grammar-filtered
    meter([7, 0], scores)  # token 0 was chosen: log 0.5
    assert meter.values == [pytest.approx(np.log(0.5))]
    meter([7, 0, 5, 5, 1], scores)  # another generation (a call generated again): nothing to score it against
    meter([7, 0, 5, 5, 1, 2], scores)  # token 2: log 0.25, against this generation's own previous step
    assert meter.values == [pytest.approx(np.log(0.5)), pytest.approx(np.log(0.25))]
