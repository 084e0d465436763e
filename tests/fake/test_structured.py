"""Structured outputs: reading OpenAI's response_format and Ollama's format, refusing what the grammar cannot
enforce, and the orchestration of a request whose answer must follow a schema, over FAKE model sessions."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from swarm_edge.errors import ConfigError
from swarm_edge.grammar_fit import ANY_VALUE
from swarm_edge.structured import OBJECT, SchemaError, from_ollama, from_openai, grammar_of, prepare
from tests.fake.helpers import ask
from tests.fake.runtime import FAKE_YAML, FakeCloud, FakeRuntime, Reply, fake_registry

pytestmark = pytest.mark.fake


class Address(BaseModel):
    city: str
    postcode: str | None = None


class Person(BaseModel):
    name: str = Field(description="full name")
    age: int
    tags: list[str]
    colour: Literal["red", "blue"]
    home: Address
    past: list[Address] = []


PERSON = Person.model_json_schema()
PREPARED = prepare(PERSON, "test")  # its $defs renamed (x--def-N) and its refs pointed there: what models get
GOOD = {"name": "Ada", "age": 36, "tags": [], "colour": "red", "home": {"city": "London"}}


def fmt(schema: dict, **kw) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, **kw}}


# ---------------------------------------------------------------- reading the request

def test_text_and_nothing_are_no_format():
    assert from_openai(None) is None and from_openai({"type": "text"}) is None
    assert from_ollama(None) is None and from_ollama("") is None


def test_json_object_mode_is_any_object():
    for out in (from_openai({"type": "json_object"}), from_ollama("json")):
        assert out is not None and out.schema == OBJECT
        assert out.problem('{"a": [1]}') is None
        assert "not follow" in out.problem("[1, 2]")
        assert out.openai() == {"type": "json_object"}


def test_a_pydantic_schema_is_taken_whole():
    out = from_openai(fmt(PERSON, strict=True))
    assert out is not None and out.name == "answer" and out.strict is True
    assert out.openai() == fmt(PREPARED, strict=True)
    assert PREPARED["properties"]["home"] == {"$ref": "#/$defs/x--def-0"} and set(PREPARED["$defs"]) == {"x--def-0"}
    assert out.problem(json.dumps(GOOD)) is None
    assert from_ollama(PERSON) is not None


@pytest.mark.parametrize("body, words", [
    ({"type": "json_schemas"}, "response_format.type 'json_schemas' is not one of"),
    ({"type": "json_schema"}, "response_format.json_schema must be an object"),
    ({"type": "json_schema", "json_schema": {"schema": OBJECT}}, "json_schema.name must be a string"),
    ({"type": "json_schema", "json_schema": {"name": "x" * 65, "schema": OBJECT}}, "1 to 64 characters"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": "object"}}, "schema must be a JSON schema"),
    (fmt({"type": "strin"}), "is not a valid JSON schema (at type)"),
    (fmt({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}}),
     "cannot enforce `minimum` at #/properties/n"),
    (fmt({"type": "string", "pattern": "^a+$", "maxLength": 3}), "`maxLength` at #"),
    (fmt({"type": "array", "items": {"type": "string"}, "uniqueItems": True}), "`uniqueItems` at #"),
    (fmt({"type": "string", "format": "email"}), "`format` at #"),
    (fmt({"$ref": "https://example.com/s.json"}), "only references into $defs"),
    (fmt({"allOf": [{"type": "object"}]}), "`allOf` at #"),
    (fmt({"type": ["string", "null"], "maxLength": 3}), "`maxLength` at #"),
    (fmt({"type": "object", "properties": {"x": {"description": "anything"}}}), "an untyped schema (any value)"),
    (fmt({"type": "object", "$defs": {"N": {"type": "number", "multipleOf": 2}}}), "`multipleOf` at #/$defs/x--def-0"),
    (fmt({"type": "object", "properties": {"a": {"$ref": "#/$defs/o/$defs/i"}},
          "$defs": {"o": {"type": "object", "$defs": {"i": {"type": "integer", "minimum": 5}}}}}), "`minimum` at"),
    (fmt({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "b"]}), "`required` at #"),
    (fmt({"type": ["string", "null"], "format": "date-time"}), "`format` at #"),
    (fmt({"oneOf": [{"type": "integer"}, {"type": "number"}]}), "`oneOf` at #"),
    (fmt({"type": "string", "maxLength": 100000}), "`maxLength` 100000 at # (at most 1000)"),
    (fmt({"type": "string", "pattern": "^\\d{3}$"}), "escapes"),
    (fmt({"type": "string", "pattern": "^(a+)+$"}), "a repeated group"),
    (fmt({"type": "string", "pattern": "^a{1,5000}$"}), "a repetition count over 1000"),
])
def test_a_schema_the_grammar_cannot_enforce_is_refused_with_its_place(body, words):
    """Strict: every constraint must be one the grammar enforces (not strict: test_a_loose_schema_...)."""
    if isinstance(body.get("json_schema"), dict):
        body = {**body, "json_schema": {**body["json_schema"], "strict": True}}
    with pytest.raises(SchemaError) as info:
        from_openai(body)
    assert words in str(info.value)
    assert isinstance(info.value, ConfigError)  # a 400 at the API


def test_ollama_format_must_be_json_or_a_schema():
    with pytest.raises(SchemaError, match="format must be \"json\" or a JSON schema"):
        from_ollama("yaml")
    loose = from_ollama({"type": "integer", "minimum": 1})  # Ollama has no strict mode: checked after the answer
    assert loose is not None and loose.generation_schema == {"type": "integer"}
    assert loose.unenforced == ("`minimum` at #",) and "less than the minimum of 1" in loose.problem("0")
    assert loose.problem("3") is None


LOOSE = [  # constraints the grammar cannot enforce, and what a not-strict format's grammar is built from instead
    ({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}},
     {"type": "object", "properties": {"n": {"type": "integer"}}}, '{"n": -1}'),
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True},
     {"type": "array", "items": {"type": "string"}}, '["a", "a"]'),
    ({"type": "string", "pattern": "^a+$", "maxLength": 3}, {"type": "string", "pattern": "^a+$"}, '"aaaa"'),
    ({"type": "string", "pattern": "^\\d{3}$"}, {"type": "string"}, '"12"'),
    ({"type": "object", "properties": {"x": {"description": "anything"}}},
     {"type": "object", "properties": {"x": ANY_VALUE}}, None),
    ({"type": "array", "items": {"minimum": 0}}, {"type": "array", "items": ANY_VALUE}, "[-1]"),
    # second read (review 11): what a left-out keyword leaned on goes with it, so the grammar never excludes a
    # value the schema allows
    ({"type": "object", "properties": {"c": {"allOf": [{"$ref": "#/$defs/x--def-0"}], "description": "c"}},
      "required": ["c"], "$defs": {"x--def-0": {"type": "string", "enum": ["red", "blue"]}}},
     {"type": "object", "properties": {"c": {"$ref": "#/$defs/x--def-0", "description": "c"}}, "required": ["c"],
      "$defs": {"x--def-0": {"type": "string", "enum": ["red", "blue"]}}}, '{"c": "green"}'),
    ({"type": "object", "patternProperties": {"^x": {"type": "string"}}, "additionalProperties": False},
     {"type": "object"}, '{"y": 1}'),
    ({"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "integer"}}, {"type": "array"},
     '[1]'),
    ({"type": "array", "prefixItems": [{"type": "string"}, {"type": "string"}], "items": False, "maxItems": 1},
     {"type": "array", "prefixItems": [{"type": "string"}], "items": False}, '["a", "b"]'),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, {"anyOf": [{"type": "integer"}, {"type": "number"}]}, "3"),
    ({"allOf": [{"type": "object"}], "type": "object", "properties": {"a": {"type": "string", "format": "email"}}},
     {"type": "object", "properties": {"a": {"type": "string"}}}, None),
]


@pytest.mark.parametrize("schema, grammar_schema, breaks", LOOSE)
def test_a_loose_schema_is_taken_its_grammar_enforces_what_it_can_and_the_answer_is_checked(
        schema, grammar_schema, breaks):
    """Regression: a response format or tool without `strict: true` that used `minimum` (a pydantic `Field(ge=0)`)
    was a 400, though OpenAI and Ollama take it. Now the grammar is built from a copy without what it cannot
    enforce, and the answer is validated against the whole schema."""
    out = from_openai(fmt(schema))
    assert out is not None and out.strict is False and out.schema == schema
    assert out.generation_schema == grammar_schema and out.unenforced
    assert grammar_of(out.generation_schema)
    if breaks is not None:
        assert out.problem(breaks) is not None


def test_an_empty_schema_is_any_value_in_the_grammar_strict_or_not():
    """The converter reads `{}` as any object: a field that may be anything must not be forced to be an object."""
    for strict in (True, False):
        out = from_openai(fmt({"type": "object", "properties": {"x": {}}}, strict=strict))
        assert out is not None and out.generation_schema["properties"]["x"] == ANY_VALUE and not out.unenforced


def test_strict_must_be_a_boolean():
    with pytest.raises(SchemaError, match="strict must be true or false"):
        from_openai(fmt({"type": "integer", "minimum": 0}, strict="false"))


def test_the_worker_is_sent_the_loosened_schema():
    """What the grammar is built from is the loosened copy (llama.cpp's converter drops `minimum` quietly, so only
    this shows which one went)."""
    from swarm_edge.config import DEFAULT_CONFIG
    from swarm_edge.orchestration.request import Sampling
    from swarm_edge.registry import load_registry

    out = from_openai(fmt({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}))
    spec = load_registry(DEFAULT_CONFIG).get("smollm2-135m")
    request = Sampling(output=out).call(spec, [{"role": "user", "content": "x"}])
    assert request.json_schema == {"type": "object", "properties": {"n": {"type": "integer"}}}


def test_what_cannot_be_left_out_is_refused_strict_or_not():
    with pytest.raises(SchemaError, match="names 'b', which `properties` lacks"):
        from_openai(fmt({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "b"]}))
    with pytest.raises(SchemaError, match="a `false` schema"):
        from_openai(fmt({"type": "object", "properties": {"x": False}}))
    with pytest.raises(SchemaError, match="only references into"):
        from_openai(fmt({"$ref": "https://example.com/s.json"}))


def test_a_deep_or_huge_schema_is_refused():
    deep: dict = {"type": "string"}
    for _ in range(40):
        deep = {"type": "array", "items": deep}
    with pytest.raises(SchemaError, match="nested more than"):
        from_openai(fmt(deep))
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 100}
                                             for i in range(3000)}}
    with pytest.raises(SchemaError, match="bytes; at most"):
        from_openai(fmt(wide))


def test_problem_says_where_the_answer_breaks_the_schema():
    out = from_openai(fmt(PERSON))
    assert "is not JSON" in out.problem('{"name": ')
    assert "at ['age']" in out.problem(json.dumps({**GOOD, "age": "36"}))
    assert "at ['home']" in out.problem(json.dumps({**GOOD, "home": {}}))


# ---------------------------------------------------------------- orchestration (FAKE model sessions)

JSON_ROUTE = "  json: {models: [small, big], strategy: cascade, min_logprob: -0.5}\npipelines:"
SURE = -0.1


def json_registry():
    return fake_registry(FAKE_YAML.replace("pipelines:", JSON_ROUTE, 1))


def test_a_structured_request_goes_to_the_json_task_unrouted_and_unsplit():
    out = from_openai(fmt(PERSON))
    rt = FakeRuntime(json_registry(), replies={"small": Reply(json.dumps(GOOD), mean_logprob=SURE)})
    run = ask(rt, "Rewrite and then translate this: Ada is 36", output=out)
    assert rt.routed == [] and rt.models_called() == ["small"]  # no router, no planner
    assert run.answer.route.task == "json" and run.answer.plan == "cascade"
    assert rt.records[0].request.json_schema == PREPARED  # the worker constrains by the schema's grammar
    assert json.loads(run.text) == GOOD


def test_an_answer_that_does_not_follow_the_schema_hands_over_to_the_next_model():
    out = from_openai(fmt(PERSON))
    rt = FakeRuntime(json_registry(), replies={"small": Reply('{"name": "Ada"}', mean_logprob=SURE),
                                               "big": Reply(json.dumps(GOOD))})
    run = ask(rt, "who is Ada?", output=out)
    assert rt.models_called() == ["small", "big"] and json.loads(run.text) == GOOD
    first, last = run.answer.steps
    assert first["accepted"] is False and "does not follow the schema" in first["checks"][0]
    assert last["valid"] is True and last["role"] == "cascade-final"


def test_a_cut_off_answer_is_shown_and_marked_invalid():
    out = from_openai({"type": "json_object"})
    rt = FakeRuntime(json_registry(), replies={"small": Reply('{"a": ', mean_logprob=SURE),
                                               "big": Reply('{"a": [1, 2', finish_reason="length")})
    run = ask(rt, "anything", output=out)
    last = run.answer.steps[-1]
    assert run.answer.finish_reason == "length" and last["valid"] is False and "not JSON" in last["problem"]


def test_without_a_json_route_the_router_decides_and_nothing_is_split():
    out = from_openai({"type": "json_object"})
    rt = FakeRuntime(replies={"small": Reply('{"ok": true}')})
    run = ask(rt, "hello, rewrite this and then translate it", output=out)
    assert rt.routed and [r.model for r in rt.records] == ["small"] and run.answer.plan != "decompose"


def test_an_ensemble_route_is_a_cascade_and_the_calculator_stays_out():
    out = from_openai({"type": "json_object"})
    rt = FakeRuntime(replies={"small": Reply('{"label": "spam"}', mean_logprob=SURE)})
    assert ask(rt, "classify this mail", output=out).answer.plan == "cascade"
    rt = FakeRuntime(replies={"small": Reply('{"total": 36}', mean_logprob=SURE)})
    run = ask(rt, "calculate 2 books at $12 and 4 pens at $3", output=out)
    assert json.loads(run.text) == {"total": 36} and rt.models_called() == ["small"]
    assert all(s["role"] != "calculator" for s in run.answer.steps)


def test_an_explicit_model_is_constrained_and_judged():
    out = from_openai(fmt(PERSON))
    rt = FakeRuntime(replies={"big": Reply(json.dumps(GOOD))})
    run = ask(rt, "who?", model_id="big", output=out)
    assert rt.records[0].request.json_schema == PREPARED and run.answer.steps[0]["valid"] is True


def test_a_pipeline_cannot_take_a_format():
    rt = FakeRuntime()
    run = ask(rt, "hi", model_id="pipeline:polish", output=from_openai({"type": "json_object"}), raises=False)
    assert isinstance(run.error, ConfigError) and "pipelines cannot take them" in str(run.error)
    assert rt.records == []


def test_the_cloud_is_sent_the_format_in_openais_shape():
    out = from_openai(fmt(PERSON, strict=True))
    cloud = FakeCloud(texts=[json.dumps(GOOD)])
    rt = FakeRuntime(cloud=cloud)
    run = ask(rt, "who?", model_id="cloud", output=out)
    assert cloud.calls[0]["response_format"] == fmt(PREPARED, strict=True)
    assert run.answer.steps[-1]["valid"] is True


def test_definitions_at_any_depth_and_of_any_name_keep_resolving():
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/space"}, "b": {"$ref": "#/definitions/space"},
                                               "c": {"$ref": "#/$defs/o/$defs/tree node"}},
              "$defs": {"space": {"type": "integer"}, "o": {"$defs": {"tree node": {
                  "type": "object", "properties": {"kids": {
                      "type": "array", "items": {"$ref": "#/$defs/o/$defs/tree node"}, "maxItems": 2}}}}}},
              "definitions": {"space": {"type": "string", "enum": ["x", "y"]}}}
    out = from_openai(fmt(schema))
    defs = out.schema["$defs"]
    assert len(defs) == 4 and all(name.startswith("x--def-") for name in defs)
    assert out.problem(json.dumps({"a": 1, "b": "x", "c": {"kids": [{"kids": []}]}})) is None
    assert "at ['b']" in out.problem(json.dumps({"a": 1, "b": "z", "c": {}}))
    with pytest.raises(SchemaError, match="only references into"):
        from_openai(fmt({"type": "object", "properties": {"a": {"type": "string"}, "b": {"$ref": "#/properties/a"}}}))


def test_a_tuple_with_items_false_is_taken():
    assert from_openai(fmt({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}],
                            "items": False})) is not None
