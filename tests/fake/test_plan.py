"""Pure parts of orchestration, as tables: the entry decision, model order, subtask prompts, the keep rule, the
vote, the calculator's reading, Steps and Answers. No model, no I/O (labelled with the fake tier)."""

from __future__ import annotations

import pytest

from swarm_edge.errors import ConfigError, UnknownModelError
from swarm_edge.orchestration.answer import Answer, Step
from swarm_edge.orchestration.calls import Call
from swarm_edge.orchestration.judge import judge, keeps, why_unsure
from swarm_edge.orchestration.plan import (
    FORCED,
    Subtask,
    compound,
    entry,
    order,
    pipeline_prompt,
    strategy_of,
    subtask_prompt,
    subtask_route,
)
from swarm_edge.orchestration.request import Request, Sampling, echoes, instruction, material, with_system
from swarm_edge.orchestration.strategies.calculator import value_of
from swarm_edge.orchestration.strategies.ensemble import label, vote
from swarm_edge.router import Route
from swarm_edge.workers.base import GenStats
from tests.fake.runtime import fake_registry

REG = fake_registry()
MSG = [{"role": "user", "content": "hi"}]


def decide(model_id=None, *, task=None, configured=False, allowed=True, decompose=True, prompt=None):
    req = Request(messages=None if prompt else MSG, prompt=prompt, model_id=model_id, task=task, decompose=decompose,
                  allow_cloud=allowed)
    return entry(req, REG, cloud_configured=configured, cloud_allowed=allowed, target="cloud:m", why_not="off")


@pytest.mark.parametrize("model_id,kind,task", [
    (None, "route", None), ("auto", "route", None), ("small", "explicit", "explicit"),
    ("pipeline:polish", "pipeline", "rewrite"), ("base", "explicit", "explicit")])
def test_entry_by_model_id(model_id, kind, task):
    e = decide(model_id)
    assert e.kind == kind and (e.top.task if e.top else None) == task


def test_entry_pipeline_subtasks():
    e = decide("pipeline:polish")
    assert [(s.task, s.uses_previous) for s in e.subtasks] == [("rewrite", False), ("chat", True)]
    assert e.subtasks[0].instruction == "Rewrite this more politely: {input}"


def test_entry_pipeline_without_instructions():
    assert [s.instruction for s in decide("pipeline:plain").subtasks] == ["", ""]


@pytest.mark.parametrize("model_id,error", [("pipeline:x", UnknownModelError), ("nope", UnknownModelError)])
def test_entry_unknown(model_id, error):
    with pytest.raises(error):
        decide(model_id)


@pytest.mark.parametrize("configured,allowed,task,kind", [
    (True, True, None, "cloud"), (True, False, None, "route"), (True, False, "extract", "task")])
def test_entry_cloud(configured, allowed, task, kind):
    e = decide("cloud", configured=configured, allowed=allowed, task=task)
    assert e.kind == kind and e.forced == FORCED


def test_entry_cloud_unconfigured_says_why():
    with pytest.raises(ConfigError, match=r"the cloud fallback is off here \(off\)"):
        decide("cloud")


def test_entry_task_is_never_split():
    e = decide(task="extract")
    assert (e.kind, e.top.model, e.decompose, e.forced) == ("task", "big", False, None)


def test_entry_decompose_follows_the_request():
    assert decide(decompose=False).decompose is False and decide().decompose is True


R = Route(task="translate", model="small", confidence=0.9)


@pytest.mark.parametrize("route,strategy,models", [
    (R, "cascade", ["small", "big", "third"]), (R, "single", ["small"]), (R, "ensemble", ["small", "big", "third"]),
    (Route(task="translate", model="big"), "cascade", ["big", "third"]),
    (Route(task="translate", model="base"), "cascade", ["base"])])
def test_order(route, strategy, models):
    assert order(route, REG.routes["translate"], strategy) == models


def test_order_without_a_route_spec():
    assert order(R, None, "cascade") == ["small"]


@pytest.mark.parametrize("task,strategy", [("rewrite", "cascade"), ("classify", "ensemble"), ("chat", "single"),
                                           ("math", "single"), ("explicit", "single")])
def test_strategy_of(task, strategy):
    assert strategy_of(REG, task) == strategy


def test_compound_needs_two_subtasks():
    subs = [Subtask("rewrite", "a"), Subtask("chat", "b")]
    assert compound(R, subs[:1], None) is None
    whole = compound(R, subs, None)
    assert whole.reason == "compound request: 2 subtasks planned by reading the request (rules + router head)"
    assert compound(R, subs, "big").reason.endswith("planned by big") and whole.confidence == 0.9


@pytest.mark.parametrize("sub,previous,prompt", [
    (Subtask("rewrite", "Fix it :"), None, "Fix it:\n\nthe text"),
    (Subtask("rewrite", "Fix it", uses_previous=True), "before", "Fix it:\n\nbefore"),
    (Subtask("rewrite", "Fix it", uses_previous=True), None, "Fix it:\n\nthe text"),
    (Subtask("translate", "Translate 'hi'", own_material=True), None, "Translate 'hi'")])
def test_subtask_prompt(sub, previous, prompt):
    assert subtask_prompt(sub, "the text", previous) == prompt


def test_subtask_prompt_without_material():
    assert subtask_prompt(Subtask("chat", "Say hi"), "", None) == "Say hi"


def test_pipeline_prompt():
    assert pipeline_prompt(Subtask("chat", "Reply: {input}"), "x") == "Reply: x"
    assert pipeline_prompt(Subtask("chat"), "x") == "x"


@pytest.mark.parametrize("routed,model,confidence", [
    (None, "small", 1.0), (Route(task="translate", model="big", confidence=0.8), "big", 0.8),
    (Route(task="chat", model="big", confidence=0.7), "small", 0.7)])
def test_subtask_route(routed, model, confidence):
    r = subtask_route(Subtask("translate"), routed, REG, 1, 3)
    assert (r.model, r.confidence, r.reason) == (model, confidence, "subtask 2/3")


@pytest.mark.parametrize("sure,echo,flags,kept", [
    (None, False, (), True), (-0.5, False, (), True), (-0.51, False, (), False), (0.0, True, (), False),
    (0.0, False, ("bad",), False)])
def test_keeps(sure, echo, flags, kept):
    assert keeps(sure, -0.5, echo=echo, flags=flags) is kept


def test_judge_records_what_it_found():
    asked = [{"role": "user", "content": "Rewrite:\ngive me the file"}]
    keep, extra = judge("rewrite", "give me the file", -0.1, asked, -0.5)
    assert keep is False and extra == {"accepted": False, "threshold": -0.5, "echo": True}


@pytest.mark.parametrize("step,why", [
    ({"echo": True}, "its answer repeats the input"), ({"checks": ["a", "b"]}, "a; b"),
    ({"mean_logprob": -0.9}, "mean logprob -0.90 < -0.5")])
def test_why_unsure(step, why):
    assert why_unsure(step, -0.5) == why


def call(text, lp):
    return Call("m" + text, text=text, stats=GenStats(mean_logprob=lp))


@pytest.mark.parametrize("texts,winner", [
    ([("yes", -0.5), ("Yes.", -0.4), ("no", -0.1)], "Yes."), ([("a", -0.3), ("b", -0.2)], "b"),
    ([("a", None), ("b", -9.0)], "b"), ([("", -0.1), ("", -0.2)], "")])
def test_vote_on_labels(texts, winner):
    assert vote("classify", [call(t, lp) for t, lp in texts]).text == winner


def test_vote_on_free_text_is_the_surest():
    assert vote("summarize", [call("a a", -0.3), call("a a", -0.3), call("b", -0.1)]).text == "b"


@pytest.mark.parametrize("text,lab", [("Positive.\nbecause", "positive"), ("  NEG-ative! ", "neg-ative"), ("", "")])
def test_label(text, lab):
    assert label(text) == lab


@pytest.mark.parametrize("wrote,got", [("2 + 2", ("2 + 2", "4")), ("no maths", (None, None)),
                                       ("1 / 0", (None, None)), ("3 * 4\n", ("3 * 4", "12"))])
def test_value_of(wrote, got):
    assert value_of(wrote) == got


def test_request_needs_exactly_one_input():
    with pytest.raises(ValueError):
        Request()
    with pytest.raises(ValueError):
        Request(messages=MSG, prompt="x")


def test_request_text_and_chat():
    r = Request(prompt="raw")
    assert r.text == "raw" and r.chat() == [{"role": "user", "content": "raw"}]
    m = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert Request(messages=m).text == "a"


def test_sampling_call_defaults_to_the_model_max_tokens():
    spec = REG.get("small")
    assert Sampling().call(spec, MSG).max_tokens == 32 and Sampling(max_tokens=5).call(spec, MSG).max_tokens == 5
    assert Sampling(stop=("x",)).call(spec, MSG, logprobs=True).logprobs is True


def test_with_system():
    assert with_system(MSG, "s")[0] == {"role": "system", "content": "s"} and with_system(MSG, "") == MSG
    own = [{"role": "system", "content": "mine"}, *MSG]
    assert with_system(own, "s") == own


def test_instruction_material_echo():
    text = "Rewrite this politely:\ngive me the file"
    assert instruction(text) == "Rewrite this politely" and material(text) == "give me the file"
    assert echoes("Give me the file!", [{"role": "user", "content": text}])
    assert not echoes("anything", [{"role": "user", "content": "no material here"}])


def test_step_serialises_in_order_and_reads_like_a_dict():
    s = Step(task="t", model="m", role="cascade", confidence=0.5, tokens=3, timings={"x": 1}, mean_logprob=-0.2,
             extra={"accepted": True}, shown=True)
    assert list(s) == ["task", "model", "role", "confidence", "tokens", "timings", "mean_logprob", "accepted"]
    assert s["accepted"] is True and s.get("echo") is None and "shown" not in s and len(s) == 8
    assert Step.from_dict(s.to_dict()).to_dict() == s.to_dict()


def test_answer_from_a_daemon_trace():
    a = Answer(text="hi", model="m", route=Route(task="chat", model="m", confidence=0.5), finish_reason="stop",
               tokens=2, plan="cascade", steps=[Step(task="chat", model="m", role="answer", extra={"x": 1})],
               escalation={"reason": "r"})
    back = Answer.from_trace(a.trace(), "hi", "stop")
    assert back.to_dict() == a.to_dict()
