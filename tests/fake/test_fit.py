"""FAKE model sessions: a routed request whose route's model cannot fit the budget goes to the best model for its
task that fits, and says so; an explicit model id is never swapped; a cascade drops the later models that cannot
fit (routes of tests/fake/runtime.py: chat -> small; rewrite: small -> big; translate: small -> big -> third)."""

from __future__ import annotations

from swarm_edge.orchestration.fit import candidates
from tests.fake.helpers import ask
from tests.fake.runtime import FakeRuntime, Reply, fake_registry

SURE, UNSURE = -0.1, -0.9


def test_candidates_are_the_routes_models_then_those_that_list_the_task_then_the_generalist():
    registry = fake_registry(unsure_model="big")
    assert candidates(registry, "translate") == ["small", "big", "third"]
    # then every chat model ("base" is a completion model, "embedder" embeds): an answer beats a refusal
    assert candidates(registry, "chat") == ["small", "big", "third"]
    assert candidates(registry, "extract") == ["big", "small", "third"]
    assert candidates(fake_registry(), "nothing-lists-this") == ["small", "big", "third"]


def test_a_routed_request_whose_model_cannot_fit_goes_to_the_next_that_fits_and_says_why():
    rt = FakeRuntime(routes={"hello there": "chat"}, too_big=frozenset({"small"}))
    run = ask(rt, "hello there")
    assert rt.models_called() == ["big"]
    route = run.answer.route
    assert route.model == "big" and route.task == "chat"
    assert "small needs more than the budget (FAKE): big instead" in route.reason


def test_an_explicit_model_is_never_swapped():
    rt = FakeRuntime(too_big=frozenset({"small"}))
    run = ask(rt, "hello there", model_id="small")
    assert rt.models_called() == ["small"] and "instead" not in run.answer.route.reason


def test_a_cascade_skips_a_later_model_that_cannot_fit():
    rt = FakeRuntime(routes={"translate this": "translate"}, too_big=frozenset({"big"}),
                     replies={"small": Reply("a", mean_logprob=UNSURE), "third": Reply("b", mean_logprob=SURE)})
    run = ask(rt, "translate this")
    assert rt.models_called() == ["small", "third"] and run.text == "b"


def test_when_nothing_fits_the_route_stays_and_admission_decides():
    rt = FakeRuntime(routes={"hello there": "chat"}, too_big=frozenset({"small", "big", "third"}))
    run = ask(rt, "hello there")
    assert rt.models_called() == ["small"] and "instead" not in run.answer.route.reason


def test_each_step_of_a_pipeline_is_fitted_too():
    rt = FakeRuntime(too_big=frozenset({"small"}), replies={"big": Reply("ok", mean_logprob=SURE)})
    ask(rt, "send the file", model_id="pipeline:polish")  # rewrite (small -> big), then chat (small)
    assert rt.models_called() == ["big", "big"]
