"""The orchestrator's plans on real models: smollm2-135m (and its twin id) answer, minilm-l6 routes.

The twin is the same GGUF under a second id, so a cascade or an ensemble has two real models without a
second download. The plans' logic (every branch, every trace field) is tested over FAKE sessions in tests/fake; these
keep what only a real model shows: a real mean log-prob deciding a cascade, the planner's JSON under llama.cpp's
grammar, and a real model writing the calculator's expression. Answer quality is benchmarks/bench_tasks.py's job.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from swarm_edge import calc, orchestrator
from swarm_edge.engine import Engine
from swarm_edge.registry import parse_registry
from tests.conftest import registry_yaml, run_stream

pytestmark = pytest.mark.real_model


def _registry(model_files, tmp_path, **kw):
    path = tmp_path / "models.yaml"
    path.write_text(registry_yaml(model_files, swarm=True, **kw))
    return parse_registry(path.read_text(), path)


def _run(registry, settings, prompt, **kw):
    """One request on a fresh engine: (answer, the streamed text, the events' types in order, scheduler stats)."""
    answer, streamed, kinds, engine = run_stream(registry, settings, prompt, **kw)
    return answer, streamed, kinds, engine.scheduler.stats


def test_cascade_escalates_when_the_first_model_is_unsure(model_files, tmp_path, settings):
    # min_logprob 0: no real answer is that sure, so the first model's answer is held back and the next answers
    registry = _registry(model_files, tmp_path, min_logprob=0.0)
    answer, streamed, kinds, _ = _run(registry, settings, "Rewrite this more politely: close the door now.")
    assert answer.route.task == "rewrite" and answer.plan == "cascade"
    first, final = answer.steps
    assert (first["model"], first["role"], first["accepted"]) == ("smollm2-135m", "cascade", False)
    assert first["mean_logprob"] < 0 and first["tokens"] > 0
    assert (final["model"], final["role"]) == ("smollm2-135m-b", "cascade-final")
    assert answer.model == "smollm2-135m-b"
    assert streamed == answer.text and answer.text  # the rejected answer was never shown
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("start") == 1





def test_planner_output_is_constrained_to_the_schema(model_files, tmp_path, settings):
    registry = _registry(model_files, tmp_path)

    async def go():
        engine = Engine(registry, settings, budget="8GiB", spare=False)
        try:
            return await orchestrator.make_plan(engine, "Rewrite this politely and then classify its sentiment: "
                                                        "you are late again")
        finally:
            await engine.close()

    subtasks, call = asyncio.run(go())
    if call.done.get("finish_reason") == "stop":  # a plan cut off by max_tokens is reported as no plan
        data = json.loads(call.text)  # the grammar makes whatever the 135M model writes valid JSON
        for sub in data["subtasks"]:
            assert sub["task"] in registry.routes and isinstance(sub["uses_previous"], bool)
        assert subtasks == data["subtasks"]
    else:
        assert subtasks == []





def test_calculator_answer_is_computed_not_generated(model_files, tmp_path, settings):
    registry = _registry(model_files, tmp_path)
    answer, streamed, _, _ = _run(registry, settings, "What is 12 times 7?")
    assert answer.route.task == "math"
    tried = answer.steps[0]
    assert tried["role"] == "calculator"
    if tried["accepted"]:  # the model wrote an expression: the shown answer is exactly its computed value
        value = calc.show(calc.evaluate(tried["expression"]))
        assert answer.text == f"{tried['expression']} = {value}\nAnswer: {value}"
    else:  # no usable expression: a plain answer from the route's model follows, and the trace keeps both
        assert tried["expression"] is None and len(answer.steps) == 2
    assert streamed == answer.text
