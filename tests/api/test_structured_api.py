"""Structured outputs through a real daemon with real llama.cpp (smollm2-135m): the openai SDK's `parse` with a
pydantic model, a streamed json_schema answer, the ollama client's `format`, and the 400s for schemas the grammar
cannot enforce."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from tests.api.conftest import openai_sdk

pytestmark = pytest.mark.real_model


class Pet(BaseModel):
    name: str = Field(max_length=12)
    kind: Literal["cat", "dog", "bird"]
    age: int
    vaccinated: bool


class Owner(BaseModel):
    owner: str = Field(max_length=16)
    pets: list[Pet] = Field(max_length=2)


PROMPT = "Ana has a dog called Rex, aged 3, vaccinated, and a cat called Tom, aged 5, not vaccinated. As JSON."


@pytest.fixture(scope="module")
def sdk(daemon):
    yield from openai_sdk(daemon)


def test_the_openai_sdk_parses_a_pydantic_model(sdk):
    done = sdk.chat.completions.parse(model="smollm2-135m", messages=[{"role": "user", "content": PROMPT}],
                                      response_format=Owner, max_tokens=160, temperature=0)
    message = done.choices[0].message
    assert isinstance(message.parsed, Owner), message.content  # parsed and validated by the SDK itself
    assert done.choices[0].finish_reason == "stop"
    step = done.model_extra["swarm"]["steps"][-1]
    assert step["valid"] is True and step["model"] == "smollm2-135m"


def test_a_streamed_json_schema_answer_parses_once_whole(daemon):
    body = {"model": "smollm2-135m", "stream": True, "max_tokens": 160, "temperature": 0,
            "messages": [{"role": "user", "content": PROMPT}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "owner", "schema": Owner.model_json_schema(), "strict": True}}}
    text, last = "", None
    with daemon.http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                text += chunk["choices"][0]["delta"].get("content") or "" if chunk["choices"] else ""
                last = chunk if chunk.get("swarm") else last
    assert Owner.model_validate_json(text)
    assert last is not None and last["swarm"]["steps"][-1]["valid"] is True


def test_json_object_mode_answers_an_object(sdk):
    done = sdk.chat.completions.create(model="smollm2-135m", response_format={"type": "json_object"},
                                       messages=[{"role": "user", "content": "Give me a JSON object with a name."}],
                                       max_tokens=60, temperature=0)
    text = done.choices[0].message.content
    if done.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # cut off by max_tokens: said so, as OpenAI does, and the trace says why it is not valid
        assert done.choices[0].finish_reason == "length" and text.lstrip().startswith("{")
        assert done.model_extra["swarm"]["steps"][-1]["valid"] is False


def test_the_ollama_client_format_takes_a_schema_and_json(daemon):
    import ollama

    client = ollama.Client(host="http://swarm-edge", transport=httpx.HTTPTransport(uds=str(daemon.socket)))
    r = client.chat(model="smollm2-135m", messages=[{"role": "user", "content": PROMPT}],
                    format=Owner.model_json_schema(), options={"num_predict": 160, "temperature": 0})
    assert Owner.model_validate_json(r.message.content)
    g = client.generate(model="smollm2-135m", prompt="A JSON object describing a cat called Tom.", format="json",
                        options={"num_predict": 80, "temperature": 0})
    assert g.response.lstrip().startswith("{")
    if g.done_reason == "stop":
        assert isinstance(json.loads(g.response), dict)


@pytest.mark.parametrize("schema, words", [
    ({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}},
     "cannot enforce `minimum` at #/properties/n"),
    ({"type": "objekt"}, "not a valid JSON schema"),
])
def test_a_strict_schema_the_grammar_cannot_enforce_is_a_400_naming_it(sdk, daemon, schema, words):
    with pytest.raises(openai.BadRequestError, match="response_format.json_schema.schema") as info:
        sdk.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "x"}],
                                    response_format={"type": "json_schema",
                                                     "json_schema": {"name": "x", "schema": schema, "strict": True}})
    assert words in str(info.value)


def test_an_invalid_schema_is_a_400_strict_or_not(sdk, daemon):
    with pytest.raises(openai.BadRequestError, match="not a valid JSON schema"):
        sdk.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "x"}],
                                    response_format={"type": "json_schema",
                                                     "json_schema": {"name": "x", "schema": {"type": "objekt"}}})
    r = daemon.http.post("/api/chat", json={"model": "smollm2-135m", "format": {"type": "objekt"}, "stream": False,
                                            "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and "not a valid JSON schema" in r.json()["error"]
    assert r.json()["error"].startswith("format")


def test_a_loose_schema_is_answered_and_the_answer_checked(daemon):
    """Regression: Ollama's `format` from a pydantic model with Field(ge=1) was a 400 (`minimum` is beyond the
    grammar). Ollama has no strict mode: the grammar enforces the rest and the trace says whether the answer keeps
    the bound."""

    class Box(BaseModel):
        count: int = Field(ge=1, le=9)

    r = daemon.http.post("/api/chat", json={
        "model": "smollm2-135m", "format": Box.model_json_schema(), "stream": False, "options": {"num_predict": 40},
        "messages": [{"role": "user", "content": "A JSON object: a box holding three apples, its count."}]})
    assert r.status_code == 200, r.text
    body = r.json()
    step = body["swarm"]["steps"][-1]
    if body["done_reason"] == "length":  # cut off: not JSON yet, and the trace says so
        assert step["valid"] is False and "not JSON" in step["problem"]
        return
    value = json.loads(body["message"]["content"])
    assert isinstance(value["count"], int)  # the type is the grammar's; the bounds are checked after the answer
    assert step["valid"] is (1 <= value["count"] <= 9)
