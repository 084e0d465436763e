"""HTTP API bugs the fuzz found, each pinned on a real daemon with the real test models."""

from __future__ import annotations

import json

import pytest

# ---------------------------------------------------------------- bugs the fuzz found

LONE = "\ud800"  # JSON allows the escape; no UTF-8 encoder (llama.cpp's tokenizer, tokenizers, the response) takes it
SURROGATE_BODIES = [
    ("/v1/chat/completions", {"model": "smollm2-135m", "max_tokens": 2,
                              "messages": [{"role": "user", "content": LONE}]}),
    ("/v1/chat/completions", {"model": "smollm2-135m", "max_tokens": 2,
                              "messages": [{"role": "user", "content": [{"type": LONE}]}]}),
    ("/v1/completions", {"model": "smollm2-135m", "max_tokens": 2, "prompt": "hi", "stop": "a" + LONE}),
    ("/v1/embeddings", {"model": "minilm-l6", "input": ["a cat", LONE]}),
    ("/api/chat", {"model": "smollm2-135m", "stream": False, "options": {"num_predict": 2},
                   "messages": [{"role": "user", "content": LONE}]}),
    ("/api/chat", {"model": "smollm2-135m", "options": {"num_predict": 2, "stop": [LONE]},
                   "messages": [{"role": "user", "content": "hi"}]}),
    ("/api/generate", {"model": "smollm2-135m", "stream": False, "options": {"num_predict": 2}, "prompt": "hi",
                       "system": LONE}),
    ("/api/embed", {"model": "minilm-l6", "input": LONE}),
]


@pytest.mark.parametrize(("path", "body"), SURROGATE_BODIES, ids=lambda x: x if isinstance(x, str) else "")
def test_lone_surrogate_is_a_400_not_a_500(daemon, path, body):
    r = daemon.http.post(path, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    assert r.status_code == 400, (r.status_code, r.text)  # was 500 (inference_failed, internal_error) or a 200 stream
    error = r.json()["error"]
    if path.startswith("/api/"):
        assert "surrogate" in error, r.text
    else:
        assert error["code"] == "invalid_request_body" and "surrogate" in error["message"], r.text


@pytest.mark.parametrize(("body", "says"), [(b'{"model": "minilm-l6", "input": "\xff"}', "not UTF-8"),
                                           (b"[" * 100_000 + b"]" * 100_000, "nested too deeply")])
def test_an_unreadable_body_is_a_400_that_says_why(daemon, body, says):
    for path in ("/v1/embeddings", "/api/embed"):
        r = daemon.http.post(path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        error = r.json()["error"]  # was "There was an error parsing the body", code "error"
        if path.startswith("/api/"):
            assert says in error, r.text
        else:
            assert says in error["message"] and error["code"] == "invalid_request_body", r.text
