"""FAKE model sessions and a FAKE cloud: when a request leaves the device, what the trace says, and what happens
when the cloud or a local model fails."""

from __future__ import annotations

import pytest

from swarm_edge.errors import BudgetError, ConfigError, InferenceError, ModelLoadError
from swarm_edge.router import Route
from tests.fake.helpers import ask
from tests.fake.runtime import FakeCloud, FakeRuntime, Reply, cloud_config

HELLO = "hello there"
REWRITE = "rewrite this more politely: give me the file now"


def test_model_cloud_goes_straight_to_the_cloud_unrouted():
    cloud = FakeCloud(["Hi ", "from afar"])
    rt = FakeRuntime(cloud=cloud)
    run = ask(rt, "extract the date: 3 May", model_id="cloud")
    a = run.answer
    assert run.text == "Hi from afar" and a.model == "cloud:big-cloud" and a.plan == "cloud"
    assert rt.records == [] and rt.routed == [] and a.left_device is True
    assert (a.route.task, a.route.target) == ("explicit", "cloud")
    assert a.route.reason == "model chosen by the caller; to the cloud: requested by the caller (model \"cloud\")"
    assert cloud.calls[0]["messages"] == [{"role": "user", "content": "extract the date: 3 May"}]  # no route system
    assert a.escalation["reason"] == "requested by the caller (model \"cloud\")"
    assert a.escalation["outcome"] == "answered"
    assert run.kinds == ["start", "token", "token", "done"] and run.starts[0]["model"] == "cloud:big-cloud"


def test_the_cloud_step_and_trace_carry_what_left():
    rt = FakeRuntime(cloud=FakeCloud(["a", "b", "c"]))
    a = ask(rt, HELLO, model_id="cloud").answer
    step = a.steps[0]
    assert (step["role"], step["model"], step["tokens"], step["confidence"]) == ("cloud", "cloud:big-cloud", 3, None)
    assert step["bytes_sent"] == 100 and step["attempts"] == 1 and step["redacted"] == {}
    esc = a.escalation
    assert (esc["target"], esc["bytes_sent"], esc["attempts"], esc["statuses"]) == ("cloud:big-cloud", 100, 1, [200])
    assert a.tokens == 3 and a.prompt_tokens == 11


def test_model_cloud_without_a_cloud_says_why():
    with pytest.raises(ConfigError, match="model \"cloud\": the cloud fallback is off here \\(not configured"):
        ask(FakeRuntime(), HELLO, model_id="cloud")


def test_model_cloud_offline_says_offline():
    with pytest.raises(ConfigError, match="offline: no cloud client"):
        ask(FakeRuntime(offline=True), HELLO, model_id="cloud")


def test_model_cloud_with_allow_cloud_false_stays_on_the_device_and_says_so():
    cloud = FakeCloud()
    rt = FakeRuntime(cloud=cloud)
    a = ask(rt, HELLO, model_id="cloud", allow_cloud=False).answer
    assert cloud.calls == [] and a.model == "small" and a.left_device is False
    assert a.escalation["outcome"] == "stayed on the device: the request says allow_cloud: false"


def test_a_hard_task_goes_to_the_cloud_with_its_route_system_prompt():
    cloud = FakeCloud(config=cloud_config(hard_tasks=["extract"]))
    rt = FakeRuntime(cloud=cloud)
    a = ask(rt, "extract the date: 3 May").answer
    assert rt.records == [] and a.plan == "cloud" and a.route.task == "extract"
    assert cloud.calls[0]["messages"][0] == {"role": "system", "content": "Extract the fields."}
    assert a.escalation["reason"] == "task 'extract' is one of cloud.hard_tasks"
    assert cloud.calls[0]["reason"] == a.escalation["reason"]
    assert isinstance(a.timings["route_s"], float)


def test_an_unsure_router_escalates():
    cloud = FakeCloud(config=cloud_config(escalate_below=0.5))
    rt = FakeRuntime(cloud=cloud, routes={"q": ("chat", 0.3)})
    a = ask(rt, "q").answer
    assert a.escalation["reason"] == "router unsure: confidence 0.30 < 0.5" and a.plan == "cloud"


def test_a_sure_router_stays():
    cloud = FakeCloud(config=cloud_config(escalate_below=0.5))
    a = ask(FakeRuntime(cloud=cloud, routes={"q": ("chat", 0.7)}), "q").answer
    assert cloud.calls == [] and a.escalation is None and a.left_device is False


def test_the_cloud_down_before_any_text_means_the_device_answers_and_says_so():
    cloud = FakeCloud(config=cloud_config(hard_tasks=["chat"]), fail_before=True)
    rt = FakeRuntime(cloud=cloud)
    run = ask(rt, HELLO)
    assert run.answer.model == "small" and run.answer.left_device is False
    esc = run.answer.escalation
    assert esc["outcome"] == "unavailable" and esc["notes"][0].startswith("cloud unavailable (scripted: the cloud is")
    assert esc["notes"][0].endswith("; answered on the device") and esc["statuses"] == [503]


def test_the_cloud_failing_after_some_text_ends_the_answer_there():
    cloud = FakeCloud(["one ", "two ", "three"], config=cloud_config(hard_tasks=["chat"]), fail_after=2)
    run = ask(FakeRuntime(cloud=cloud), HELLO)
    a = run.answer
    assert run.text == "one two " and a.finish_reason == "error" and a.left_device is True
    assert a.escalation["outcome"] == "unavailable" and a.escalation["notes"] == ["scripted: the stream broke"]


def test_a_hard_task_offline_stays_and_the_trace_says_why():
    rt = FakeRuntime(cloud_policy=cloud_config(hard_tasks=["chat"]), offline=True)
    a = ask(rt, HELLO).answer
    assert a.model == "small" and a.escalation["reason"] == "task 'chat' is one of cloud.hard_tasks"
    assert a.escalation["outcome"] == "stayed on the device: offline: no cloud client exists in this process"
    assert a.escalation["target"] == "cloud"


def test_no_cloud_policy_no_escalation_trace():
    assert ask(FakeRuntime(), HELLO).answer.escalation is None


@pytest.mark.parametrize("exc", [BudgetError("no room"), ModelLoadError("bad load"), InferenceError("crashed")])
def test_a_local_failure_before_the_answer_starts_goes_to_the_cloud(exc):
    cloud = FakeCloud(["saved"])
    rt = FakeRuntime(cloud=cloud, replies={"small": Reply(fail_at_open=exc)})
    a = ask(rt, HELLO).answer
    assert a.text == "saved" and a.left_device is True
    assert a.escalation["reason"] == f"local failure: {type(exc).__name__}: {exc}"


def test_a_local_failure_at_begin_goes_to_the_cloud():
    rt = FakeRuntime(cloud=FakeCloud(["saved"]), replies={"small": Reply(fail_at_begin=InferenceError("x"))})
    assert ask(rt, HELLO).answer.text == "saved"


def test_a_local_failure_after_the_answer_started_is_the_caller_error():
    broken = Reply(["a", "b"], fail_after=1, fail_with=InferenceError("x"))
    rt = FakeRuntime(cloud=FakeCloud(), replies={"small": broken})
    run = ask(rt, HELLO, raises=False)
    assert isinstance(run.error, InferenceError) and rt.cloud.calls == []


def test_on_local_failure_off_raises():
    cloud = FakeCloud(config=cloud_config(on_local_failure=False))
    rt = FakeRuntime(cloud=cloud, replies={"small": Reply(fail_at_open=BudgetError("no room"))})
    with pytest.raises(BudgetError):
        ask(rt, HELLO)
    assert cloud.calls == []


def test_a_local_failure_with_the_cloud_down_raises_the_local_error():
    cloud = FakeCloud(fail_before=True)
    rt = FakeRuntime(cloud=cloud, replies={"small": Reply(fail_at_open=BudgetError("no room"))})
    with pytest.raises(BudgetError, match="no room"):
        ask(rt, HELLO)
    assert len(cloud.calls) == 1


def test_a_local_failure_not_allowed_to_leave_raises():
    cloud = FakeCloud()
    rt = FakeRuntime(cloud=cloud, replies={"small": Reply(fail_at_open=BudgetError("no room"))})
    with pytest.raises(BudgetError):
        ask(rt, HELLO, allow_cloud=False)
    assert cloud.calls == []


def test_other_errors_are_not_local_failures():
    rt = FakeRuntime(cloud=FakeCloud(), replies={"small": Reply(fail_at_open=ValueError("bug"))})
    with pytest.raises(ValueError):
        ask(rt, HELLO)


# ---------------------------------------------------------------- a cascade unsure to its end

def unsure_cascade(**cloud_kw):
    cloud = FakeCloud(["from ", "cloud"], **cloud_kw)
    return FakeRuntime(cloud=cloud, replies={"small": Reply("meh", mean_logprob=-0.9),
                                             "big": Reply("hmm", mean_logprob=-0.8)})


def test_a_cascade_unsure_to_its_last_model_asks_the_cloud():
    rt = unsure_cascade()
    run = ask(rt, REWRITE)
    a = run.answer
    assert run.text == "from cloud" and a.model == "cloud:big-cloud" and a.plan == "cascade"
    assert [(s["role"], s.get("accepted")) for s in a.steps] == [("cascade", False), ("cascade-final", False),
                                                                ("cloud", None)]
    assert a.escalation["reason"] == "cascade: the last local model big is unsure too (mean logprob -0.80 < -0.5)"
    assert rt.records[1].request.logprobs is True and a.tokens == 2 and a.left_device is True


def test_the_cloud_gets_the_route_system_prompt_of_the_cascade():
    rt = unsure_cascade()
    rt.replies["third"] = Reply("eh", mean_logprob=-0.9)
    ask(rt, "translate this: hola amigo")
    assert rt.cloud.calls[0]["messages"][0]["content"] == "Translate faithfully."


def test_a_cascade_whose_last_model_is_sure_shows_it():
    rt = unsure_cascade()
    rt.replies["big"] = Reply("Could you give me the file?", mean_logprob=-0.2)
    run = ask(rt, REWRITE)
    assert run.text == "Could you give me the file?" and rt.cloud.calls == []
    assert run.answer.steps[-1]["role"] == "cascade-final" and run.answer.steps[-1]["accepted"] is True


def test_the_cloud_down_after_an_unsure_cascade_shows_the_last_local_answer():
    rt = unsure_cascade(fail_before=True)
    run = ask(rt, REWRITE)
    assert run.text == "hmm" and run.answer.steps[-1]["accepted"] is True
    assert run.answer.escalation["notes"][0].endswith("; the last local answer is shown")


def test_an_echo_at_the_end_of_a_cascade_names_the_echo():
    rt = unsure_cascade()
    rt.replies["big"] = Reply("give me the file now", mean_logprob=-0.1)
    a = ask(rt, "Rewrite this more politely:\ngive me the file now").answer
    assert a.escalation["reason"].endswith("(its answer repeats the input)")


def test_on_cascade_unsure_off_streams_the_last_model():
    rt = unsure_cascade(config=cloud_config(on_cascade_unsure=False))
    run = ask(rt, REWRITE)
    assert run.text == "hmm" and rt.records[1].request.logprobs is False and rt.cloud.calls == []


def test_a_cascade_without_the_cloud_allowed_streams_the_last_model():
    rt = unsure_cascade()
    run = ask(rt, REWRITE, allow_cloud=False)
    assert run.text == "hmm" and rt.cloud.calls == [] and run.answer.escalation is None


def test_a_pipeline_never_escalates():
    cloud = FakeCloud(config=cloud_config(hard_tasks=["rewrite", "chat"]))
    a = ask(FakeRuntime(cloud=cloud), "x", model_id="pipeline:polish").answer
    assert cloud.calls == [] and a.escalation is None


def test_an_explicit_model_never_escalates():
    cloud = FakeCloud()
    rt = FakeRuntime(cloud=cloud, replies={"small": Reply(fail_at_open=BudgetError("no room"))})
    with pytest.raises(BudgetError):
        ask(rt, HELLO, model_id="small")
    assert cloud.calls == []


def test_a_named_task_can_escalate_when_hard():
    cloud = FakeCloud(config=cloud_config(hard_tasks=["extract"]))
    a = ask(FakeRuntime(cloud=cloud), "anything", task="extract").answer
    assert a.plan == "cloud" and a.route.task == "extract"


def test_escalation_route_keeps_the_scores():
    cloud = FakeCloud(config=cloud_config(escalate_below=0.5))
    rt = FakeRuntime(cloud=cloud, routes={"q": Route(task="chat", model="small", confidence=0.2, reason="r",
                                                     scores={"chat": 0.2})})
    a = ask(rt, "q").answer
    assert a.route.scores == {"chat": 0.2} and a.route.target == "cloud" and a.route.model == "cloud:big-cloud"


def test_model_cloud_with_the_cloud_down_is_the_cloud_error():
    # the caller asked for the cloud by name: there is no device answer to fall back to (before this version the
    # request fell through to routing with the cloud's name as its model and failed as an unknown model)
    from swarm_edge.errors import CloudUnavailableError
    rt = FakeRuntime(cloud=FakeCloud(fail_before=True))
    with pytest.raises(CloudUnavailableError, match="scripted: the cloud is down"):
        ask(rt, HELLO, model_id="cloud")
    assert rt.records == []
