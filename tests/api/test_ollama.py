"""Ollama-style clients against a real daemon: NDJSON streaming exactly as Ollama sends it."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.real_model


def test_chat_ndjson_stream(daemon):
    body = {"model": "smollm2-135m:latest", "messages": [{"role": "user", "content": "Say hello."}],
            "options": {"num_predict": 8, "temperature": 0}, "cache_prompt": False}  # afresh: equal text promised
    with daemon.http.stream("POST", "/api/chat", json=body) as r:  # Ollama streams unless stream: false
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    *parts, last = lines
    assert all(p["done"] is False and p["message"]["role"] == "assistant" for p in parts)
    assert last["done"] is True and last["done_reason"] == "length" and last["eval_count"] == len(parts) == 8
    assert last["model"] == "smollm2-135m" and last["total_duration"] > last["eval_duration"] > 0
    assert last["prompt_eval_count"] > 0 and last["created_at"].endswith("Z")
    text = "".join(p["message"]["content"] for p in parts)

    whole = daemon.http.post("/api/chat", json={**body, "stream": False}).json()
    assert whole["done"] is True and whole["message"]["content"] == text


def test_generate_embed_tags_ps(daemon):
    r = daemon.http.post("/api/generate", json={"model": "smollm2-135m", "prompt": "Why is the sky blue?",
                                                "stream": False, "options": {"num_predict": 6}}).json()
    assert r["done"] and r["response"] and r["eval_count"] == 6
    raw = daemon.http.post("/api/generate", json={"model": "smollm2-135m", "prompt": "1, 2, 3,", "raw": True,
                                                  "stream": False, "options": {"num_predict": 4}}).json()
    assert raw["done"] and raw["response"]
    load = daemon.http.post("/api/generate", json={"model": "smollm2-135m"}).json()  # Ollama's preload idiom
    assert load["done"] and load["done_reason"] == "load"

    emb = daemon.http.post("/api/embed", json={"model": "minilm-l6", "input": ["one", "two"]}).json()
    assert len(emb["embeddings"]) == 2 and len(emb["embeddings"][0]) == 384 and emb["prompt_eval_count"] > 0

    tags = daemon.http.get("/api/tags").json()["models"]
    assert {t["name"] for t in tags} >= {"smollm2-135m", "minilm-l6"}
    assert all(len(t["digest"]) == 64 and t["size"] > 0 for t in tags)
    ps = daemon.http.get("/api/ps").json()["models"]
    assert {"smollm2-135m", "minilm-l6"} <= {p["name"] for p in ps} and all(p["size"] > 0 for p in ps)
    assert daemon.http.get("/api/version").json()["version"]

    bad = daemon.http.post("/api/chat", json={"model": "smollm2-135m", "format": "yaml",
                                              "messages": [{"role": "user", "content": "x"}]})
    assert bad.status_code == 400 and "format must be \"json\" or a JSON schema" in bad.json()["error"]


def test_health_status_metrics(daemon):
    assert daemon.http.get("/health").json()["status"] == "ok"
    st = daemon.status()
    assert st["budget"] > st["used"] > 0 and st["waiting"] == 0 and st["streams_open"] == 0
    assert st["budget_source"].startswith("default 60% of ")  # RAM, or this box's memory cgroup (test_boxmem.py)
    assert st["models"]["smollm2-135m"]["estimate"] > 0
    route = daemon.http.post("/swarm/route", json={"prompt": "please rewrite this"}).json()
    assert route["task"] == "rewrite" and route["model"] == "smollm2-135m" and route["target"] == "local"
    text = daemon.http.get("/metrics").text
    samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    assert samples['swarm_edge_requests_total{path="/health",status="200"}'] >= 1
    assert samples["swarm_edge_memory_budget_bytes"] == st["budget"]
    assert samples["swarm_edge_loads_total"] >= 1 and samples["swarm_edge_queue_depth"] == 0
    assert any(k.startswith("swarm_edge_tokens_generated_total") for k in samples)
    assert "# TYPE swarm_edge_requests_total counter" in text


def test_worker_killed_mid_stream_then_reload(daemon):
    import os
    import signal

    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 200, "stream": True}
    with daemon.http.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
        pid = next(x["pid"] for x in daemon.status()["residents"] if x["model"] == "smollm2-135m")
        os.kill(pid, signal.SIGKILL)
        rest = [line for line in lines if line.startswith("data: ")]
    err = json.loads(rest[-1][6:])["error"]
    assert err["code"] == "worker_crashed" and "SIGKILL" in err["message"]
    again = daemon.http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 4})
    assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 4
    assert next(x["pid"] for x in daemon.status()["residents"] if x["model"] == "smollm2-135m") != pid


def test_client_gone_mid_stream_keeps_worker_and_frees_lease(daemon):
    # 900 tokens take over 10 s at ~80 tok/s: a lease free within 5 s means the generation was cancelled
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 900, "stream": True}
    before = _tokens_generated(daemon)
    with daemon.http.stream("POST", "/v1/chat/completions", json=body) as r:
        next(line for line in r.iter_lines() if '"content":"' in line and '"role"' not in line)
        pid = next(x["pid"] for x in daemon.status()["residents"] if x["model"] == "smollm2-135m")
    # the response is closed after one token: the daemon must cancel, release the lease, keep the worker
    import time

    for _ in range(50):
        res = {x["model"]: x for x in daemon.status()["residents"]}
        if res["smollm2-135m"]["in_use"] == 0:
            break
        time.sleep(0.1)
    assert res["smollm2-135m"]["in_use"] == 0 and res["smollm2-135m"]["pid"] == pid
    assert _tokens_generated(daemon) == before  # cancelled: a finished generation would have been counted
    ok = daemon.http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 3}).json()
    assert ok["usage"]["completion_tokens"] == 3  # and it reads its own tokens, not the cancelled stream's


def _tokens_generated(daemon) -> float:
    for line in daemon.http.get("/metrics").text.splitlines():
        if line.startswith('swarm_edge_tokens_generated_total{model="smollm2-135m"}'):
            return float(line.split()[-1])
    return 0.0


def test_the_real_ollama_client(daemon):
    """The `ollama` Python package, pointed at our socket, works unchanged."""
    import httpx
    import ollama

    client = ollama.Client(host="http://swarm-edge", transport=httpx.HTTPTransport(uds=str(daemon.socket)))
    r = client.chat(model="smollm2-135m", messages=[{"role": "user", "content": "Say hello."}],
                    options={"num_predict": 6, "temperature": 0})
    assert r.message.role == "assistant" and r.message.content and r.done and r.eval_count == 6
    # the second request reuses the first's cached prompt: same shape promised, not the same greedy text
    parts = list(client.chat(model="smollm2-135m", messages=[{"role": "user", "content": "Say hello."}],
                             options={"num_predict": 6, "temperature": 0}, stream=True))
    assert "".join(p.message.content for p in parts).strip() and parts[-1].done and parts[-1].eval_count == 6
    assert all(not p.done for p in parts[:-1]) and len(parts) == 7
    g = client.generate(model="smollm2-135m:latest", prompt="Why is the sky blue?", options={"num_predict": 5})
    assert g.response and g.done_reason == "length"
    e = client.embed(model="minilm-l6", input=["hello", "world"])
    assert len(e.embeddings) == 2 and len(e.embeddings[0]) == 384
    assert "minilm-l6" in {m.model for m in client.list().models}
    assert "smollm2-135m" in {m.model for m in client.ps().models}
    with pytest.raises(ollama.ResponseError) as exc:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 404 and "no-such-model" in exc.value.error
