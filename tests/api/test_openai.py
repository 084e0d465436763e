"""The real openai SDK against a real `swarm-edge serve` over its Unix socket: chat, streaming, completions,
embeddings, model listing, and the error answers (404, 400, 413, 503 + Retry-After, 507)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import math

import httpx2
import openai
import pytest

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def sdk(daemon):
    http = httpx2.Client(transport=httpx2.HTTPTransport(uds=str(daemon.socket)))
    yield openai.OpenAI(base_url="http://swarm-edge/v1", api_key="not-needed", http_client=http, max_retries=0)
    http.close()


def test_models_listing(sdk):
    ids = [m.id for m in sdk.models.list()]
    assert ids[0] == "auto"
    assert {"smollm2-135m", "minilm-l6", "smollm2-135m-b"} <= set(ids)
    assert sdk.models.retrieve("minilm-l6").id == "minilm-l6"


def test_chat_and_streaming_agree(sdk):
    """Streamed and whole answers carry the same promises; their greedy *text* is promised to be equal only when
    both evaluate the prompt afresh (cache_prompt: false). With the default prompt cache the second request
    reuses the first's prefix, so its prompt is evaluated in other batch shapes and float sums may differ on
    some CPUs (seen on AVX2-only EPYC: the texts part from the 4th token)."""
    messages = [{"role": "user", "content": "Name three colours."}]
    full = sdk.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=16, temperature=0)
    text = full.choices[0].message.content
    assert text.strip() and full.model == "smollm2-135m" and full.choices[0].message.role == "assistant"
    assert full.usage.completion_tokens == 16 and full.choices[0].finish_reason == "length"
    assert full.usage.prompt_tokens > 5 and full.usage.total_tokens == full.usage.prompt_tokens + 16
    swarm = full.model_extra["swarm"]
    assert swarm["model"] == "smollm2-135m" and swarm["left_device"] is False
    assert {"queue_s", "load_s", "generate_s", "ttft_s"} <= set(swarm["timings"])

    def streamed(**extra):
        chunks = list(sdk.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=16,
                                                  temperature=0, stream=True, stream_options={"include_usage": True},
                                                  extra_body=extra))
        deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert chunks[0].choices[0].delta.role == "assistant"
        finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        assert len(finals) == 1 and finals[0].choices[0].finish_reason == "length"
        assert finals[0].model_extra["swarm"]["tokens"] == 16
        assert chunks[-1].usage.completion_tokens == 16 and chunks[-1].choices == []
        assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
        assert len(deltas) == 16  # one event per token
        return "".join(deltas)

    assert streamed().strip()  # prompt cache reused: same shape, text not promised equal
    fresh = {"cache_prompt": False}
    whole = sdk.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=16, temperature=0,
                                       extra_body=fresh).choices[0].message.content
    assert streamed(**fresh) == whole  # afresh each time: greedy gives the same text, token by token
    sdk.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "Say something else."}],
                                max_tokens=8, temperature=0)  # another cache state in between
    assert streamed(**fresh) == whole


def test_auto_routes(sdk):
    r = sdk.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hello, how are you?"}],
                                    max_tokens=4)
    route = r.model_extra["swarm"]["route"]
    assert r.model == "smollm2-135m" and route["task"] == "chat" and "hello" in route["reason"]


def test_completions(sdk):
    fresh = {"cache_prompt": False}  # equal text across two requests is promised only for prompts evaluated afresh
    r = sdk.completions.create(model="smollm2-135m", prompt="The capital of France is", max_tokens=5, temperature=0,
                               extra_body=fresh)
    assert r.object == "text_completion" and r.choices[0].text and r.usage.completion_tokens == 5
    stream = list(sdk.completions.create(model="smollm2-135m", prompt="The capital of France is", max_tokens=5,
                                         temperature=0, stream=True, extra_body=fresh))
    assert "".join(c.choices[0].text for c in stream) == r.choices[0].text


def test_embeddings(sdk):
    texts = ["A cat sits on the mat.", "A kitten rests on a rug.", "Quarterly tax filing deadlines"]
    r = sdk.embeddings.create(model="minilm-l6", input=texts)  # the SDK asks for base64 and decodes it
    vecs = [d.embedding for d in r.data]
    assert [d.index for d in r.data] == [0, 1, 2] and all(len(v) == 384 for v in vecs)
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vecs)
    cos = [sum(a * b for a, b in zip(vecs[0], v, strict=True)) for v in vecs[1:]]
    assert cos[0] > cos[1] + 0.3  # paraphrase closer than an unrelated text
    floats = sdk.embeddings.create(model="minilm-l6", input=texts[0], encoding_format="float")
    assert max(abs(a - b) for a, b in zip(floats.data[0].embedding, vecs[0], strict=True)) < 1e-6
    assert r.usage.prompt_tokens > 10


def test_error_answers(sdk, daemon):
    with pytest.raises(openai.NotFoundError) as e:
        sdk.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found" and "gpt-9" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="embedding model"):
        sdk.chat.completions.create(model="minilm-l6", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="not an embedding model"):
        sdk.embeddings.create(model="smollm2-135m", input="x")
    with pytest.raises(openai.BadRequestError, match="n > 1"):
        sdk.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "x"}], n=2)
    with pytest.raises(openai.BadRequestError, match="context") as e:
        sdk.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "word " * 3000}])
    assert e.value.body["code"] == "context_length_exceeded"

    http = daemon.http
    bad = http.post("/v1/chat/completions", json={"model": "smollm2-135m"})
    assert bad.status_code == 400 and "messages" in bad.json()["error"]["message"]
    bad = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request_body"
    bad = http.post("/v1/chat/completions", json={"model": "smollm2-135m",
                                                  "messages": [{"role": "wizard", "content": "x"}]})
    assert bad.status_code == 400 and "role" in bad.json()["error"]["message"]
    big = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "x" * (1 << 20)}]}
    r = http.post("/v1/chat/completions", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    chunked = http.post("/v1/chat/completions", content=iter([json.dumps(big).encode()]))  # no Content-Length
    assert chunked.status_code == 413
    r = http.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["message"] == "no such endpoint"
    r = http.post("/api/chat", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and "nope" in r.json()["error"]  # Ollama's error shape: {"error": "..."}
    assert daemon.proc.poll() is None  # none of that hurt the daemon


def test_queue_full_is_503_with_retry_after(make_daemon):
    d = make_daemon("--max-queue", "1")
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Count to twenty."}], "max_tokens": 64}

    def one(_):
        with d.http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            r.read()
            return r.status_code, r.headers.get("retry-after"), r.text

    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    codes = sorted(code for code, _, _ in results)
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, results
    for code, retry, text in results:
        if code == 503:
            assert retry and int(retry) >= 1 and json.loads(text)["error"]["code"] == "server_busy"
        else:
            assert text.rstrip().endswith("data: [DONE]")


def test_model_too_big_for_budget_is_507_with_both_numbers(make_daemon):
    d = make_daemon("--budget", "150MB")
    r = d.http.post("/v1/chat/completions", json={"model": "smollm2-135m", "messages": [{"role": "user",
                                                                                         "content": "hi"}]})
    assert r.status_code == 507, r.text
    err = r.json()["error"]
    assert err["code"] == "insufficient_memory" and err["needed_bytes"] > err["budget_bytes"] == 150_000_000
    assert err["message"].count("MiB") >= 2  # both numbers, in words a person reads
    assert d.http.get("/health").status_code == 200
