"""FAKE model sessions: multi-step plans (pipelines from models.yaml, compound requests read or planned)."""

from __future__ import annotations

import json

import pytest

from swarm_edge import orchestrator
from swarm_edge.errors import UnknownModelError
from swarm_edge.router import Route
from tests.fake.helpers import ask
from tests.fake.runtime import FakeRuntime, Reply, fake_registry

COMPOUND = "Rewrite this note politely and then translate it into French: give me the file now."
POLITE = "Rewrite this more politely: {input}"
QUOTED = 'Translate "good morning" into French and then summarize this text: the cat sat on the mat all day.'


def sure_keywords(rt_keywords):
    """The keyword rules' task, at a confidence the reading accepts (0.9 >= split_confidence 0.75)."""
    def route(text):
        r = rt_keywords.route(text)
        return Route(task=r.task, model=r.model, confidence=0.9, reason=r.reason, scores=r.scores)
    return route


def runtime(**kw):
    rt = FakeRuntime(**kw)
    rt.routes = sure_keywords(rt.keywords)
    return rt


# ---------------------------------------------------------------- pipelines

def test_a_pipeline_runs_its_steps_in_order_feeding_each_output_on():
    rt = FakeRuntime(replies={"small": [Reply("Could you send the file?"), Reply("Sure, here it is.")]})
    run = ask(rt, "send the file", model_id="pipeline:polish")
    assert run.answer.plan == "pipeline" and run.text == "Could you send the file?" + orchestrator.SEPARATOR + \
        "Sure, here it is."
    first, second = (r.request.messages[-1]["content"] for r in rt.records)
    assert first == "Rewrite this more politely: send the file"
    assert second == "Reply briefly to this message: Could you send the file?"
    assert run.kinds.count("start") == 1 and run.answer.timings["route_s"] is None and rt.routed == []


def test_a_pipeline_step_runs_its_route_strategy():
    rt = FakeRuntime(replies={"small": [Reply("meh", mean_logprob=-0.9), Reply("reply")], "big": Reply("Kindly")})
    run = ask(rt, "send it", model_id="pipeline:polish")
    assert rt.models_called() == ["small", "big", "small"]
    assert [(s["role"], s["subtask"], s["instruction"]) for s in run.answer.steps] == [
        ("cascade", 1, POLITE), ("cascade-final", 1, POLITE), ("answer", 2, "Reply briefly to this message: {input}")]
    assert run.text == "Kindly" + orchestrator.SEPARATOR + "reply" and run.answer.model == "small"


def test_a_pipeline_without_instructions_passes_the_text_as_it_is():
    rt = FakeRuntime(replies={"small": Reply("one"), "big": Reply("two")})
    run = ask(rt, "the text", model_id="pipeline:plain")
    assert [r.request.messages[-1]["content"] for r in rt.records] == ["the text", "one"]
    assert [s["instruction"] for s in run.answer.steps] == ["chat", "extract"]
    assert rt.records[1].request.messages[0]["content"] == "Extract the fields."


def test_a_pipeline_hints_the_models_still_to_come():
    rt = FakeRuntime()
    ask(rt, "x", model_id="pipeline:plain")
    assert rt.hints == [["small", "big"], ["big"], []]


def test_a_pipeline_route_names_its_steps():
    run = ask(FakeRuntime(), "x", model_id="pipeline:polish")
    assert run.answer.route.reason == "pipeline 'polish': rewrite -> chat" and run.answer.route.task == "rewrite"


def test_an_unknown_pipeline_names_the_known_ones():
    with pytest.raises(UnknownModelError, match="unknown pipeline 'nope'.*plain, polish"):
        ask(FakeRuntime(), "x", model_id="pipeline:nope")


def test_a_pipeline_failing_midway_still_clears_the_hint():
    rt = FakeRuntime(replies={"big": Reply("a", fail_after=0, fail_with=RuntimeError("boom"))})
    run = ask(rt, "x", model_id="pipeline:plain", raises=False)
    assert isinstance(run.error, RuntimeError) and rt.hints[-1] == []


def test_a_pipeline_keeps_the_request_system_message_for_every_step():
    rt = FakeRuntime()
    ask(rt, messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "x"}],
        model_id="pipeline:polish")
    assert all(r.request.messages[0] == {"role": "system", "content": "sys"} for r in rt.records)


# ---------------------------------------------------------------- compound requests, read by rules

def test_a_compound_request_is_answered_piece_by_piece():
    rt = runtime(replies={"small": [Reply("Please give me the file.", mean_logprob=-0.1),
                                    Reply("Donnez-moi le fichier, s'il vous plaît.", mean_logprob=-0.1)]})
    run = ask(rt, COMPOUND)
    a = run.answer
    assert a.plan == "decompose" and a.route.reason.startswith("compound request: 2 subtasks planned by reading")
    reading = a.steps[0]
    assert (reading["task"], reading["role"], reading["model"], reading["subtasks"]) == \
        ("plan", "planner", None, ["rewrite", "translate"])
    assert [(s["subtask"], s["instruction"]) for s in a.steps[1:]] == [
        (1, "Rewrite this note politely"), (2, "Translate it into French")]
    assert run.text == "Please give me the file." + orchestrator.SEPARATOR + "Donnez-moi le fichier, s'il vous plaît."


def test_each_piece_gets_its_instruction_and_the_material_or_the_previous_output():
    rt = runtime(replies={"small": [Reply("Please give me the file."), Reply("Donnez-moi le fichier.")]})
    ask(rt, COMPOUND)
    assert rt.records[0].request.messages[-1]["content"] == "Rewrite this note politely:\n\ngive me the file now."
    assert rt.records[1].request.messages[-1]["content"] == "Translate it into French:\n\nPlease give me the file."


def test_a_piece_that_quotes_its_own_material_gets_no_other():
    rt = runtime()
    ask(rt, QUOTED)
    assert rt.records[0].request.messages[-1]["content"] == 'Translate "good morning" into French'


def test_a_compound_request_hints_its_models_and_clears_the_hint():
    rt = runtime()
    ask(rt, COMPOUND)
    assert rt.hints[0] == ["small", "small"] and rt.hints[-1] == []


def test_one_start_for_a_whole_compound_answer_and_a_separator_between_parts():
    rt = runtime(replies={"small": [Reply(["a", "b"]), Reply("Bonjour le fichier est là")]})
    run = ask(rt, COMPOUND)
    assert run.kinds.count("start") == 1 and orchestrator.SEPARATOR in run.text


def test_decompose_off_answers_as_one_request():
    rt = runtime()
    run = ask(rt, COMPOUND, decompose=False)
    assert run.answer.plan == "cascade" and run.answer.route.task == "rewrite"


def test_decompose_off_in_models_yaml_answers_as_one_request():
    rt = runtime(registry=fake_registry(decompose="false"))
    assert ask(rt, COMPOUND).answer.plan != "decompose"


def test_a_single_task_request_is_not_split():
    rt = runtime()
    run = ask(rt, "rewrite this politely: give me the file now")
    assert run.answer.plan == "cascade" and all("subtask" not in s for s in run.answer.steps)


def test_a_piece_the_router_is_unsure_of_is_not_a_task_of_its_own():
    rt = FakeRuntime()
    rt.routes = lambda text: Route(task=rt.keywords.route(text).task, model="small", confidence=0.5, reason="unsure")
    assert ask(rt, COMPOUND).answer.plan != "decompose"


def test_the_router_picks_the_model_of_a_piece_when_it_agrees_on_the_task():
    rt = runtime()
    base = rt.routes
    rt.routes = lambda text: (Route(task="translate", model="big", confidence=0.9, reason="x")
                              if text.startswith("Translate it") else base(text))
    run = ask(rt, COMPOUND)
    assert run.answer.steps[-1]["model"] == "big" and run.answer.steps[-1]["subtask"] == 2


# ---------------------------------------------------------------- with a planner model

def planner_runtime(plan: str, **kw):
    return runtime(registry=fake_registry(planner="big"), replies={"big": [Reply(plan), Reply("done")], **kw})


PLAN = json.dumps({"subtasks": [
    {"task": "rewrite", "instruction": "Make the note polite", "uses_previous": False},
    {"task": "translate", "instruction": "Put it into French", "uses_previous": True}]})


def test_the_planner_writes_the_subtasks_under_a_json_schema():
    rt = planner_runtime(PLAN)
    run = ask(rt, COMPOUND)
    req = rt.records[0].request
    assert rt.records[0].model == "big" and req.json_schema == orchestrator.plan_schema(list(rt.registry.routes))
    assert req.max_tokens == 200
    assert "Task types named in it, in order: rewrite, translate" in req.messages[-1]["content"]
    assert run.answer.plan == "decompose" and run.answer.route.reason.endswith("planned by big")
    planner = run.answer.steps[0]
    assert (planner["role"], planner["model"], planner["subtasks"]) == ("planner", "big", ["rewrite", "translate"])
    assert planner["tokens"] == 1  # counted in the step, but not shown
    assert [s["instruction"] for s in run.answer.steps[1:2]] == ["Make the note polite"]


def test_the_planner_tokens_are_not_counted_as_shown():
    rt = planner_runtime(PLAN, small=Reply(["a", "b", "c"]))
    run = ask(rt, COMPOUND)
    shown = sum(s["tokens"] for s in run.answer.steps if s["role"] != "planner" and s.get("accepted") is not False)
    assert run.answer.tokens == shown


def test_a_plan_cut_off_is_not_a_plan():
    rt = planner_runtime('{"subtasks": [{"task": "rew')
    run = ask(rt, COMPOUND)
    assert run.answer.plan != "decompose"
    assert run.answer.steps[0]["note"] == "not a usable plan; answered as one request"


def test_unknown_tasks_in_a_plan_are_dropped():
    plan = json.dumps({"subtasks": [{"task": "poetry", "instruction": "x", "uses_previous": False},
                                    {"task": "rewrite", "instruction": "y", "uses_previous": False}]})
    run = ask(planner_runtime(plan), COMPOUND)
    assert run.answer.plan != "decompose"  # one usable subtask is no plan


def test_make_plan_returns_the_subtasks_and_the_call():
    rt = planner_runtime(PLAN)
    import asyncio
    subtasks, call = asyncio.run(orchestrator.make_plan(rt, COMPOUND))
    assert [s["task"] for s in subtasks] == ["rewrite", "translate"] and call.text == PLAN
    assert call.done.get("chunks") == 1
