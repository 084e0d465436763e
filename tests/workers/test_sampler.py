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


LOOPING = {"type": "object", "properties": {"serial": {"type": "string"}, "phone": {"type": "string"},
                                            "count": {"type": "integer"}},
           "required": ["serial", "phone", "count"], "additionalProperties": False}


def test_a_model_stuck_in_a_loop_inside_a_string_still_ends_with_valid_json(path, monkeypatch):
    """SmolLM2 writes "12345678901234567890..." for a serial number it was never given, until max_tokens cuts the
    JSON off; the loop guard ends the string and the answer validates."""
    breaks: list[int] = []
    real = GrammarFirst._break

    def counted(self, *args):
        token = real(self, *args)
        breaks.append(token)
        return token

    monkeypatch.setattr(GrammarFirst, "_break", counted)
    spec = load_registry(DEFAULT_CONFIG).get("smollm2-135m")
    backend = open_backend(spec, {"model": path}, threads=2)
    try:
        events = list(backend.generate(GenerateRequest(
            messages=[{"role": "user", "content": "List the ticket's serial number, phone and count in JSON. "
                                                  "Ticket: printer broken. Serial: 12121212121212121212121212"
                                                  "121212121212121212121212121212121212121212121212..."}],
            max_tokens=300, temperature=0, json_schema=LOOPING, cache_prompt=False)))
    finally:
        backend.close()
    text = "".join(e["text"] for e in events if e["type"] == "token")
    assert breaks, "the model did not loop here: this test no longer tests the guard"
    assert events[-1]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(text), LOOPING)


def test_what_counts_as_a_loop():
    """Pure logic (no model): the cycle detector and the continuation test on made-up tails."""
    g = GrammarFirst.__new__(GrammarFirst)
    g.loops, g._pieces = 0, {1: b"12", 2: b'",', 3: b"1234567890123", 4: b"", 5: b"345"}
    g._tail = b'{"serial": "' + b"1234567890" * 7
    cycle = g._cycle()
    assert cycle is not None and (cycle * 2).find(b"1234567890") >= 0
    assert g._continues(1, cycle) and g._continues(3, cycle) and not g._continues(2, cycle)
    assert not g._continues(5, cycle)  # the cycle, but not from where it goes on
    assert not g._continues(4, cycle)  # an empty piece goes nowhere
    g._tail = b'{"text": "' + b"ab" * 20  # 40 bytes: not yet a loop at first
    assert g._cycle() is None
    g.loops = 1  # once it has looped, 24 bytes and three turns are enough
    assert g._cycle() == b"ab"
    g._tail = b'{"name": "Anna Maria Annabel Annette"'
    assert g._cycle() is None
