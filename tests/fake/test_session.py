"""A ModelSession over a FAKE worker (the scripted pipe end of a worker process): what Start, Token and Done carry,
the timings a trace shows, and that an unwanted generation is abandoned in the worker."""

from __future__ import annotations

import asyncio
import contextlib

from swarm_edge.events import Done, Start, Token
from swarm_edge.model_session import ModelSession
from swarm_edge.workers.base import GenerateRequest, GenStats
from tests.fake.runtime import ManualClock

REQ = GenerateRequest(prompt="hi", max_tokens=3)


class FakeWorker:
    """FAKE: a worker handle that replays scripted wire events and records what the session asked of it."""

    def __init__(self, chunks=("a", "b"), requests=0, spawn_to_ready_s=0.5, clock=None):
        self.chunks, self.requests, self.clock = list(chunks), requests, clock
        self.info = {"spawn_to_ready_s": spawn_to_ready_s}
        self.calls: list[str] = []
        self.last_embed_tokens = 4

    async def begin(self, request, sink=None):
        self.calls.append("begin")
        self.requests += 1

    async def generate(self, request, *, sent=False):
        self.calls.append(f"generate sent={sent}")
        for c in self.chunks:
            if self.clock:
                self.clock.advance(0.1)
            yield {"type": "token", "text": c}
        yield {"type": "done", "finish_reason": "length", "chunks": len(self.chunks), "ttft_s": 0.05,
               "decode_tok_s": 20.0, "extra_key": 1}

    async def abandon(self):
        self.calls.append("abandon")

    async def embed(self, texts):
        return [[1.0] for _ in texts]


def session(worker, clock, counted):
    return ModelSession("m", worker, t0=clock.now - 3.0, t_files=clock.now - 2.0, t_leased=clock.now,
                        count_tokens=lambda m, n: counted.append((m, n)), clock=clock)


def events_of(s):
    async def go():
        return [e async for e in s.generate(REQ)]
    return asyncio.run(go())


def test_start_tokens_then_done_with_the_worker_figures():
    clock, counted = ManualClock(), []
    worker = FakeWorker(clock=clock)
    evs = events_of(session(worker, clock, counted))
    assert [type(e) for e in evs] == [Start, Token, Token, Done]
    assert evs[0].model == "m" and [e.text for e in evs[1:3]] == ["a", "b"]
    assert evs[-1].result == GenStats(finish_reason="length", chunks=2, ttft_s=0.05, decode_tok_s=20.0)
    assert worker.calls == ["begin", "generate sent=True"] and counted == [("m", 2)]


def test_a_first_request_splits_its_wait_into_load_and_queue():
    clock = ManualClock()
    s = session(FakeWorker(requests=0, spawn_to_ready_s=1.5, clock=clock), clock, [])
    assert s.timings == {"files_s": 1.0, "queue_s": 0.5, "load_s": 1.5}


def test_a_later_request_waited_in_the_queue_only():
    clock = ManualClock()
    s = session(FakeWorker(requests=3, clock=clock), clock, [])
    assert s.timings == {"files_s": 1.0, "queue_s": 2.0, "load_s": 0.0}


def test_the_timings_after_a_generation():
    clock = ManualClock()
    s = session(FakeWorker(clock=clock), clock, [])
    events_of(s)
    assert list(s.timings) == ["files_s", "queue_s", "load_s", "ttft_s", "model_ttft_s", "decode_tok_s",
                               "generate_s", "total_s"]
    assert s.timings["ttft_s"] == 3.1 and s.timings["generate_s"] == 0.2 and s.timings["total_s"] == 3.2


def test_closing_at_start_abandons_the_generation_in_the_worker():
    clock = ManualClock()
    worker = FakeWorker(clock=clock)
    s = session(worker, clock, [])

    async def go():
        async with contextlib.aclosing(s.generate(REQ)) as evs:
            async for _ in evs:
                break
    asyncio.run(go())
    assert worker.calls == ["begin", "abandon"]


def test_embed_records_its_timings_and_tokens():
    clock = ManualClock()
    s = session(FakeWorker(clock=clock), clock, [])
    assert asyncio.run(s.embed(["x", "y"])) == [[1.0], [1.0]]
    assert s.timings["tokens"] == 4 and s.timings["embed_s"] == 0.0 and s.timings["total_s"] == 3.0


def test_events_read_like_the_old_dicts():
    assert Token("x")["type"] == "token" and Token("x")["text"] == "x"
    assert Start("m")["type"] == "start" and Start("m", route="r")["route"] == "r"
    done = Done("answer")
    assert done["type"] == "done" and done["answer"] == "answer" and done.answer == "answer"


def test_an_unknown_event_key_is_a_key_error():
    import pytest
    with pytest.raises(KeyError):
        Token("x")["nope"]


def test_genstats_from_the_wire_ignores_unknown_and_null_keys():
    assert GenStats.from_wire({"type": "done", "chunks": 3, "mean_logprob": None, "x": 1}) == GenStats(chunks=3)


def test_a_requests_wire_form_is_asdict_without_the_copy():
    """The worker's order carries GenerateRequest.wire(); it must say what dataclasses.asdict says, field for field
    (a field holding a dataclass would break that: asdict converts it, wire would hand it to json.dumps)."""
    import json
    from dataclasses import asdict

    full = GenerateRequest(messages=[{"role": "user", "content": "x"}], max_tokens=5, temperature=0.5, top_p=0.9,
                           stop=["\n"], seed=1, logprobs=True, json_schema={"type": "object"}, cache_prompt=False,
                           tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="auto",
                           parallel_tool_calls=False)
    for req in (full, REQ):
        assert req.wire() == asdict(req)
        assert GenerateRequest(**json.loads(json.dumps(req.wire()))) == req
