"""The orchestrator's plans on real models: smollm2-135m (and its twin id) answer, minilm-l6 routes.

The twin is the same GGUF under a second id, so a cascade or an ensemble has two real models without a
second download; what these tests check is the plan's mechanics and its trace, not answer quality (that
is benchmarks/bench_tasks.py's job with the default swarm).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from swarm_edge import calc, orchestrator
from swarm_edge.engine import Engine
from swarm_edge.errors import UnknownModelError
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


def test_cascade_keeps_a_sure_answer(model_files, tmp_path, settings):
    registry = _registry(model_files, tmp_path, min_logprob=-100.0)
    answer, streamed, _, _ = _run(registry, settings, "Rewrite this more politely: close the door now.")
    (step,) = answer.steps
    assert (step["model"], step["accepted"]) == ("smollm2-135m", True)
    assert answer.model == "smollm2-135m" and streamed == answer.text and answer.tokens == step["tokens"]


def test_ensemble_votes_on_labels(model_files, tmp_path, settings):
    registry = _registry(model_files, tmp_path)
    answer, streamed, _, _ = _run(registry, settings,
                                  "Classify the sentiment as positive or negative: I loved every minute of it.")
    assert answer.plan == "ensemble" and answer.route.task == "classify"
    assert [s["model"] for s in answer.steps] == ["smollm2-135m", "smollm2-135m-b"]
    assert [s["role"] for s in answer.steps] == ["vote", "vote"]
    assert sum(s["chosen"] for s in answer.steps) == 1
    assert streamed == answer.text


def test_pipeline_feeds_each_output_forward(model_files, tmp_path, settings):
    registry = _registry(model_files, tmp_path)
    answer, streamed, _, _ = _run(registry, settings, "give me the keys", model_id="pipeline:polish")
    assert answer.plan == "pipeline"
    assert [(s["subtask"], s["task"]) for s in answer.steps if s["role"] != "planner"][-1][0] == 2
    assert answer.steps[0]["task"] == "rewrite" and answer.steps[-1]["task"] == "chat"
    assert streamed == answer.text and orchestrator.SEPARATOR in answer.text
    with pytest.raises(UnknownModelError, match="unknown pipeline 'nope'.*polish"):
        _run(registry, settings, "x", model_id="pipeline:nope")


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


def test_compound_request_runs_the_planner_and_reports_it(model_files, tmp_path, settings):
    registry = _registry(model_files, tmp_path)
    prompt = "Rewrite this politely and then classify its sentiment: you are late again"
    answer, streamed, _, stats = _run(registry, settings, prompt)
    planner = answer.steps[0]
    assert planner["role"] == "planner" and planner["model"] == "smollm2-135m"
    assert streamed == answer.text
    if answer.plan == "decompose":
        assert {s["subtask"] for s in answer.steps[1:]} == set(range(1, len(planner["subtasks"]) + 1))
    else:  # the 135M planner wrote one usable subtask or none: answered as one request, and the trace says so
        assert "not a usable plan" in planner["note"]


def test_without_a_planner_model_the_reading_is_the_plan(model_files, tmp_path, settings):
    # the default: no planner model; the request's own pieces, routed by the head, are the subtasks
    path = tmp_path / "models.yaml"
    path.write_text(registry_yaml(model_files, swarm=True).replace("  planner: smollm2-135m\n", ""))
    registry = parse_registry(path.read_text(), path)
    assert registry.router.planner is None
    answer, streamed, _, _ = _run(registry, settings, "Rewrite 'close the door now' more politely, "
                                                      "then classify its sentiment as positive or negative.")
    assert answer.plan == "decompose", answer.route.reason
    plan, *steps = answer.steps
    assert (plan["role"], plan["model"], plan["subtasks"]) == ("planner", None, ["rewrite", "classify"])
    assert [s["subtask"] for s in steps][0] == 1 and steps[-1]["subtask"] == 2
    assert steps[0]["instruction"] == "Rewrite 'close the door now' more politely"
    assert streamed == answer.text and orchestrator.SEPARATOR in answer.text


def test_single_request_skips_the_planner(model_files, tmp_path, settings):
    registry = _registry(model_files, tmp_path)
    answer, _, _, _ = _run(registry, settings, "Hi! How are you today?")
    assert answer.plan == "single" and [s["role"] for s in answer.steps] == ["answer"]
    assert answer.route.task == "chat" and answer.route.reason.startswith("the trained head says 'chat'")


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
