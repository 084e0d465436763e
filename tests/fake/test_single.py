"""FAKE model sessions: a single model answers (explicit id, routed, raw prompt, a named task)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from swarm_edge import orchestrator
from swarm_edge.errors import ConfigError, UnknownModelError
from tests.fake.helpers import ask
from tests.fake.runtime import FakeRuntime, Reply

HELLO = "hello there"
TIMING_KEYS = ["route_s", "files_s", "queue_s", "load_s", "ttft_s", "model_ttft_s", "decode_tok_s", "generate_s",
               "total_s"]


def test_an_explicit_model_answers_unrouted():
    rt = FakeRuntime(replies={"big": Reply(["Hi", " you"])})
    run = ask(rt, "anything at all", model_id="big")
    assert run.kinds == ["start", "token", "token", "done"] and run.text == "Hi you"
    assert run.starts[0]["model"] == "big" and run.starts[0]["route"].task == "explicit"
    a = run.answer
    assert (a.text, a.model, a.plan, a.route.reason) == ("Hi you", "big", "single", "model chosen by the caller")
    assert a.route.confidence == 1.0 and a.timings["route_s"] is None and rt.routed == []
    assert [(s["task"], s["model"], s["role"], s["confidence"], s["tokens"]) for s in a.steps] == \
        [("explicit", "big", "answer", 1.0, 2)]


def test_an_explicit_model_gets_the_messages_as_they_are():
    rt = FakeRuntime()
    msgs = [{"role": "user", "content": "extract the date: 3 May"}]
    ask(rt, messages=msgs, model_id="big")
    req = rt.records[0].request
    assert req.messages == msgs and req.max_tokens == 32 and req.logprobs is False


def test_sampling_reaches_the_model():
    rt = FakeRuntime()
    ask(rt, HELLO, max_tokens=5, temperature=0.7, top_p=0.9, stop=["\n"], seed=3, cache_prompt=False)
    req = rt.records[0].request
    assert (req.max_tokens, req.temperature, req.top_p, req.stop, req.seed, req.cache_prompt) == \
        (5, 0.7, 0.9, ["\n"], 3, False)


def test_logprobs_asks_every_call_to_measure():
    rt = FakeRuntime(replies={"small": Reply("x", mean_logprob=-0.2)})
    run = ask(rt, HELLO, logprobs=True)
    assert rt.records[0].request.logprobs is True and run.answer.steps[0]["mean_logprob"] == -0.2


def test_without_logprobs_a_step_has_no_mean_logprob():
    run = ask(FakeRuntime(), HELLO)
    assert "mean_logprob" not in run.answer.steps[0]


def test_an_embedding_model_cannot_answer_and_nothing_is_loaded():
    rt = FakeRuntime()
    with pytest.raises(ConfigError, match="embedding model"):
        ask(rt, "hi", model_id="embedder")
    assert rt.records == []


def test_an_unknown_model_is_refused():
    with pytest.raises(UnknownModelError):
        ask(FakeRuntime(), "hi", model_id="nope")


def test_messages_and_prompt_together_are_refused():
    with pytest.raises(ValueError, match="exactly one"):
        ask(FakeRuntime(), messages=[{"role": "user", "content": "hi"}], prompt="hi")


def test_a_completion_model_continues_the_conversation_text():
    rt = FakeRuntime()
    ask(rt, messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "Once upon"},
                      {"role": "assistant", "content": "a time"}], model_id="base")
    req = rt.records[0].request
    assert req.messages is None and req.prompt == "Once upon\na time"


def test_a_routed_request_goes_to_its_route_model():
    rt = FakeRuntime(replies={"small": Reply(["Hello", "!"])})
    run = ask(rt, HELLO)
    a = run.answer
    assert a.route.task == "chat" and a.model == "small" and a.plan == "single" and run.text == "Hello!"
    assert rt.routed == [HELLO] and isinstance(a.timings["route_s"], float)
    assert run.starts[0]["route"] is a.route


def test_the_route_system_prompt_goes_first():
    rt = FakeRuntime()
    run = ask(rt, "extract the date from this: 3 May 2024")
    assert run.answer.route.task == "extract" and run.answer.model == "big"
    assert rt.records[0].request.messages[0] == {"role": "system", "content": "Extract the fields."}


def test_a_request_with_its_own_system_message_keeps_it():
    rt = FakeRuntime()
    msgs = [{"role": "system", "content": "mine"}, {"role": "user", "content": "extract the date: 3 May"}]
    ask(rt, messages=msgs)
    assert rt.records[0].request.messages == msgs


def test_routing_uses_the_last_user_message():
    rt = FakeRuntime()
    ask(rt, messages=[{"role": "user", "content": "extract it"}, {"role": "assistant", "content": "ok"},
                      {"role": "user", "content": HELLO}])
    assert rt.routed == [HELLO]


def test_a_raw_prompt_is_continued_by_the_routed_model_without_template():
    rt = FakeRuntime()
    run = ask(rt, prompt="hello, once upon a time")
    req = rt.records[0].request
    assert req.prompt == "hello, once upon a time" and req.messages is None
    assert run.answer.plan == "single" and run.answer.timings["route_s"] is None
    assert [s["role"] for s in run.answer.steps] == ["answer"]


def test_a_named_task_is_answered_by_its_route_unrouted_and_unsplit():
    rt = FakeRuntime()
    run = ask(rt, "rewrite this and then translate it", task="extract")
    assert rt.routed == [] and run.answer.route.task == "extract" and run.answer.model == "big"
    assert run.answer.route.reason == "task chosen by the caller" and run.answer.plan == "single"


def test_an_unknown_task_is_refused_with_the_known_ones():
    with pytest.raises(UnknownModelError, match="unknown task 'poetry'.*chat, classify"):
        ask(FakeRuntime(), "hi", task="poetry")


def test_the_answer_carries_the_model_figures():
    rt = FakeRuntime(replies={"small": Reply(["a", "b", "c"], finish_reason="length", prompt_tokens=42)})
    a = ask(rt, HELLO).answer
    assert (a.tokens, a.finish_reason, a.prompt_tokens) == (3, "length", 42)
    assert list(a.timings) == TIMING_KEYS and a.timings["decode_tok_s"] == 100.0
    assert rt.tokens == {"small": 3}


def test_the_answer_dict_and_trace_have_every_field():
    a = ask(FakeRuntime(), HELLO).answer
    assert list(a.to_dict()) == ["text", "model", "route", "finish_reason", "timings", "tokens", "prompt_tokens",
                                 "left_device", "plan", "steps", "escalation"]
    assert list(a.trace()) == ["model", "route", "plan", "steps", "timings", "tokens", "prompt_tokens",
                               "left_device", "escalation"]
    assert a.to_dict()["route"]["task"] == "chat" and a.escalation is None and a.left_device is False
    assert list(a.steps[0]) == ["task", "model", "role", "confidence", "tokens", "timings"]


def test_max_tokens_defaults_to_the_model_setting():
    rt = FakeRuntime()
    ask(rt, HELLO)
    assert rt.records[0].request.max_tokens == 32


def test_closing_the_stream_after_start_releases_the_session():
    rt = FakeRuntime(replies={"small": Reply(["a", "b", "c"])})

    async def go():
        async with contextlib.aclosing(orchestrator.stream(rt, messages=[{"role": "user", "content": HELLO}])) as ev:
            async for e in ev:
                if e["type"] == "token":
                    break
    asyncio.run(go())
    assert rt.records[0].closed_early and rt.open_sessions == 0


def test_an_error_after_start_reaches_the_caller():
    rt = FakeRuntime(replies={"small": Reply(["a", "b"], fail_after=1, fail_with=RuntimeError("boom"))})
    run = ask(rt, HELLO, raises=False)
    assert isinstance(run.error, RuntimeError) and run.kinds == ["start", "token"]


def test_ask_async_joins_the_tokens_and_sees_each():
    rt = FakeRuntime(replies={"small": Reply(["x", "y"])})
    seen = []
    a = asyncio.run(orchestrator.ask_async(HELLO, rt, system="be nice", on_token=seen.append))
    assert seen == ["x", "y"] and a.text == "xy"
    assert rt.records[0].request.messages[0] == {"role": "system", "content": "be nice"}


def test_route_async_and_route_give_the_router_choice():
    rt = FakeRuntime(routes={"q": ("math", 0.8)})
    r = asyncio.run(orchestrator.route_async(rt, "q"))
    assert (r.task, r.model, r.confidence) == ("math", "small", 0.8)
    assert orchestrator.route(rt, "q").task == "math"


def test_embed_picks_the_first_embedding_model():
    rt = FakeRuntime()
    model, vectors, timings = asyncio.run(orchestrator.embed(rt, ["ab", "abc"]))
    assert model == "embedder" and vectors == [[2.0, 1.0], [3.0, 1.0]]
    assert list(timings) == ["files_s", "queue_s", "load_s", "embed_s", "total_s", "tokens"]


def test_embed_refuses_a_model_that_generates():
    with pytest.raises(ConfigError, match="not an embedding model; embedding models here: embedder"):
        asyncio.run(orchestrator.embed(FakeRuntime(), ["x"], "small"))


def test_a_client_gone_while_the_model_waits_releases_it():
    # ordered by an event, not a sleep: the model is held before its first token until the test lets it go
    async def go():
        gate = asyncio.Event()
        rt = FakeRuntime(replies={"small": Reply(["never", "shown"], gate=gate)})
        events = orchestrator.stream(rt, messages=[{"role": "user", "content": HELLO}])
        first = await events.__anext__()
        assert first["type"] == "start" and rt.open_sessions == 1
        waiting = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0)  # let it reach the gate (a yield to the loop, not a wait for time)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await events.aclose()
        return rt
    rt = asyncio.run(go())
    assert rt.records[0].closed_early and rt.open_sessions == 0 and rt.records[0].events == ["start"]
