"""FAKE model sessions: cascades, ensembles and the calculator, as the routes of tests/fake/runtime.py define them
(rewrite: small -> big at -0.5; translate: small -> big -> third; classify/summarize: ensembles; math: calculator)."""

from __future__ import annotations

import pytest

from swarm_edge import orchestrator
from swarm_edge.router import Route
from tests.fake.helpers import ask
from tests.fake.runtime import FakeRuntime, Reply

SURE, UNSURE = -0.1, -0.9
REWRITE = "rewrite this more politely: give me the file now"
CALC = "calculate what 2 books at $12 and 4 pens at $3 cost"


def steps(run, *keys):
    return [tuple(s.get(k) for k in keys) for s in run.answer.steps]


# ---------------------------------------------------------------- cascade

def test_a_sure_first_model_is_kept_and_the_next_never_runs():
    rt = FakeRuntime(replies={"small": Reply(["Please", " send it"], mean_logprob=SURE)})
    run = ask(rt, REWRITE)
    assert rt.models_called() == ["small"] and run.text == "Please send it" and run.answer.plan == "cascade"
    assert steps(run, "role", "model", "accepted", "threshold", "mean_logprob") == \
        [("cascade", "small", True, -0.5, SURE)]
    assert run.answer.tokens == 2 and run.kinds == ["start", "token", "token", "done"]


def test_a_cascade_try_is_measured_and_held_back():
    rt = FakeRuntime(replies={"small": Reply("x", mean_logprob=SURE)})
    run = ask(rt, REWRITE)
    assert rt.records[0].request.logprobs is True
    assert run.starts[0]["model"] == "small" and len(run.starts) == 1


def test_an_unsure_first_model_hands_over_and_only_the_kept_answer_is_shown():
    rt = FakeRuntime(replies={"small": Reply("meh", mean_logprob=UNSURE), "big": Reply(["Kindly", " share"])})
    run = ask(rt, REWRITE)
    assert rt.models_called() == ["small", "big"] and run.text == "Kindly share" and run.answer.model == "big"
    assert steps(run, "role", "model", "accepted") == [("cascade", "small", False), ("cascade-final", "big", None)]
    assert rt.records[1].request.logprobs is False
    assert run.answer.tokens == 2  # the rejected try is not counted


def test_the_threshold_is_inclusive():
    rt = FakeRuntime(replies={"small": Reply("Please send it", mean_logprob=-0.5)})
    assert ask(rt, REWRITE).answer.steps[0]["accepted"] is True


def test_an_answer_without_logprob_is_kept():
    rt = FakeRuntime(replies={"small": Reply("Please send it", mean_logprob=None)})
    run = ask(rt, REWRITE)
    assert rt.models_called() == ["small"] and "mean_logprob" not in run.answer.steps[0]


def test_an_answer_that_repeats_the_material_is_rejected():
    rt = FakeRuntime(replies={"small": Reply("Give me the file now.", mean_logprob=SURE)})
    run = ask(rt, "Rewrite this more politely:\ngive me the file now")
    assert run.answer.steps[0]["accepted"] is False and run.answer.steps[0]["echo"] is True
    assert rt.models_called() == ["small", "big"]


def test_a_failed_self_check_is_recorded_and_rejects():
    rt = FakeRuntime(replies={"small": Reply("Guten Morgen, wie geht es dir und der Familie?", mean_logprob=SURE)})
    run = ask(rt, "translate into French: good morning, how are you and the family?")
    first = run.answer.steps[0]
    assert first["accepted"] is False and first["checks"] and "echo" not in first
    assert rt.models_called() == ["small", "big"]


def test_a_three_model_chain_tries_each_in_turn():
    rt = FakeRuntime(replies={"small": Reply("a", mean_logprob=UNSURE), "big": Reply("b", mean_logprob=UNSURE),
                              "third": Reply("c")})
    run = ask(rt, "translate this: hola")
    assert rt.models_called() == ["small", "big", "third"] and run.text == "c"
    assert steps(run, "role", "accepted") == [("cascade", False), ("cascade", False), ("cascade-final", None)]


def test_the_route_system_prompt_goes_to_every_try():
    rt = FakeRuntime(replies={"small": Reply("a", mean_logprob=UNSURE)})
    ask(rt, "translate this: hola")
    assert all(r.request.messages[0]["content"] == "Translate faithfully." for r in rt.records)


def test_a_route_to_a_later_model_starts_the_cascade_there():
    rt = FakeRuntime(routes={"q": Route(task="translate", model="big", confidence=0.9, reason="x")},
                     replies={"big": Reply("b", mean_logprob=UNSURE)})
    ask(rt, "q")
    assert rt.models_called() == ["big", "third"]


def test_a_model_the_route_does_not_list_answers_alone():
    rt = FakeRuntime(routes={"q": Route(task="rewrite", model="third", confidence=0.4, reason="unsure")})
    run = ask(rt, "q")
    assert rt.models_called() == ["third"] and run.roles() == ["answer"] and run.answer.plan == "cascade"


def test_every_step_has_the_route_confidence():
    rt = FakeRuntime(routes={"q": ("rewrite", 0.66)}, replies={"small": Reply("a", mean_logprob=UNSURE)})
    assert [s["confidence"] for s in ask(rt, "q").answer.steps] == [0.66, 0.66]


# ---------------------------------------------------------------- ensemble

def test_the_label_majority_wins():
    rt = FakeRuntime(replies={"small": Reply("positive", mean_logprob=-0.3),
                              "big": Reply("Positive.", mean_logprob=-0.2),
                              "third": Reply("negative", mean_logprob=-0.01)})
    run = ask(rt, "classify the sentiment: great film")
    assert run.answer.plan == "ensemble" and run.text == "Positive." and run.answer.model == "big"
    assert steps(run, "role", "model", "chosen") == [("vote", "small", False), ("vote", "big", True),
                                                    ("vote", "third", False)]
    assert all(r.request.logprobs for r in rt.records) and run.answer.tokens == 1


def test_a_tie_goes_to_the_surest():
    rt = FakeRuntime(replies={"small": Reply("a", mean_logprob=-0.3), "big": Reply("b", mean_logprob=-0.2),
                              "third": Reply("c", mean_logprob=-0.25)})
    assert ask(rt, "classify this: x").text == "b"


def test_free_text_goes_to_the_best_logprob():
    rt = FakeRuntime(replies={"small": Reply("short", mean_logprob=-0.1), "big": Reply("long", mean_logprob=-0.4)})
    run = ask(rt, "summarize this: a long story")
    assert run.text == "short" and run.answer.plan == "ensemble"


def test_an_answer_without_logprob_loses_the_vote():
    rt = FakeRuntime(replies={"small": Reply("one", mean_logprob=None), "big": Reply("two", mean_logprob=-5.0)})
    assert ask(rt, "summarize this: text").text == "two"


def test_the_ensemble_members_get_the_route_system_prompt():
    rt = FakeRuntime()
    ask(rt, "classify this: x")
    assert [r.request.messages[0]["content"] for r in rt.records] == ["Answer with the label only."] * 3


def test_an_ensemble_of_one_model_streams_it():
    rt = FakeRuntime(routes={"q": Route(task="classify", model="third", confidence=0.9, reason="x")},
                     replies={"third": Reply(["neg", "ative"])})
    run = ask(rt, "q")
    assert run.roles() == ["answer"] and run.kinds == ["start", "token", "token", "done"]
    assert rt.records[0].request.logprobs is False


def test_the_ensemble_shows_one_start_after_every_member():
    rt = FakeRuntime()
    run = ask(rt, "classify this: x")
    assert len(run.starts) == 1 and all(r.events[-1] == "done" for r in rt.records)


# ---------------------------------------------------------------- calculator
# math: the calculator on one model (strategy single); count: on a cascade (small, then big)
COUNT = "count the cost of 2 books at $12 and 4 pens at $3"


def test_the_calculator_computes_the_expression_the_model_wrote():
    rt = FakeRuntime(replies={"small": Reply("2 * 12 + 4 * 3", mean_logprob=SURE)})
    run = ask(rt, CALC)
    assert run.text == "2 * 12 + 4 * 3 = 36\nAnswer: 36" and run.answer.plan == "single"
    assert steps(run, "role", "expression", "accepted", "wrote") == [("calculator", "2 * 12 + 4 * 3", True,
                                                                      "2 * 12 + 4 * 3")]
    req = rt.records[0].request
    assert req.messages[0] == {"role": "system", "content": orchestrator.CALC_SYSTEM}
    assert req.messages[1:3] == orchestrator.CALC_EXAMPLES and req.messages[3]["content"] == CALC
    assert req.max_tokens == 64 and req.logprobs is False  # the last (only) model: nobody to hand over to
    assert run.answer.tokens == 1 and run.kinds == ["start", "token", "done"]


def test_on_a_cascade_the_first_expression_is_measured_and_an_unsure_one_passes_on():
    rt = FakeRuntime(replies={"small": Reply("2 * 12", mean_logprob=UNSURE), "big": Reply("2*12+4*3")})
    run = ask(rt, COUNT)
    assert run.text.endswith("Answer: 36") and run.answer.plan == "cascade"
    assert [r.request.logprobs for r in rt.records] == [True, False]
    assert steps(run, "model", "accepted") == [("small", False), ("big", True)]


def test_a_sure_expression_on_a_cascade_is_kept():
    rt = FakeRuntime(replies={"small": Reply("5 * 5", mean_logprob=SURE)})
    run = ask(rt, COUNT)
    assert rt.models_called() == ["small"] and run.text == "5 * 5 = 25\nAnswer: 25"


def test_no_expression_falls_back_to_the_route_model_streaming():
    rt = FakeRuntime(replies={"small": ["I think it is", "thirty six"]})
    run = ask(rt, CALC)
    assert rt.models_called() == ["small", "small"] and run.text == "thirty six"
    assert run.roles() == ["calculator", "cascade-final"]
    assert run.answer.steps[0]["expression"] is None and run.answer.steps[0]["accepted"] is False
    assert run.answer.tokens == 1  # the attempt is not counted
    assert rt.records[1].request.messages == [{"role": "user", "content": CALC}]


def test_no_expression_on_a_cascade_falls_back_to_the_cascade():
    rt = FakeRuntime(replies={"small": [Reply("no idea", mean_logprob=SURE), Reply("36", mean_logprob=SURE)],
                              "big": Reply("nope")})
    run = ask(rt, COUNT)
    assert rt.models_called() == ["small", "big", "small"] and run.text == "36"
    assert run.roles() == ["calculator", "calculator", "cascade"]


def test_an_expression_that_does_not_evaluate_is_no_expression():
    rt = FakeRuntime(replies={"small": Reply("1 / 0", mean_logprob=SURE), "big": Reply("2+2")})
    run = ask(rt, COUNT)
    assert run.answer.steps[0]["expression"] is None and run.text.endswith("Answer: 4")


def test_a_request_with_its_own_system_message_gets_no_calculator():
    rt = FakeRuntime()
    run = ask(rt, messages=[{"role": "system", "content": "mine"}, {"role": "user", "content": CALC}])
    assert run.roles() == ["answer"] and rt.records[0].request.messages[0]["content"] == "mine"


def test_logprobs_on_asks_the_last_attempt_to_measure_too():
    rt = FakeRuntime(replies={"small": Reply("nothing", mean_logprob=SURE), "big": Reply("3+3")})
    ask(rt, COUNT, logprobs=True)
    assert [r.request.logprobs for r in rt.records] == [True, True]


@pytest.mark.parametrize("wrote,shown", [("7 * 6", "42"), ("10 / 4", "2.5"), ("(1 + 2) * 3", "9")])
def test_the_shown_value(wrote, shown):
    rt = FakeRuntime(replies={"small": Reply(wrote, mean_logprob=SURE)})
    assert ask(rt, CALC).text == f"{wrote} = {shown}\nAnswer: {shown}"
