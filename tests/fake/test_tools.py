"""Tool calls: reading OpenAI's tools and tool_choice, the call grammar and parser, and the orchestration of a
request that offers functions, over FAKE model sessions (the calls a fake model "makes" are scripted)."""

from __future__ import annotations

import json

import pytest

from swarm_edge import toolcalls
from swarm_edge.errors import ConfigError
from swarm_edge.structured import SchemaError, from_openai
from swarm_edge.toolcalls import Toolset
from tests.fake.helpers import ask
from tests.fake.runtime import FAKE_YAML, FakeCloud, FakeRuntime, Reply, fake_registry

pytestmark = pytest.mark.fake

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["city"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                                  "required": ["a", "b"], "additionalProperties": False}}}
PARIS = {"name": "get_weather", "arguments": {"city": "Paris"}}


# ---------------------------------------------------------------- reading the request

def test_no_tools_or_none_is_no_toolset():
    assert Toolset.from_openai(None) is None and Toolset.from_openai([]) is None
    assert Toolset.from_openai([WEATHER], "none") is None


def test_choices():
    assert Toolset.from_openai([WEATHER, ADD]).choice == "auto"
    assert Toolset.from_openai([WEATHER, ADD], "required").choice == "required"
    named = Toolset.from_openai([WEATHER, ADD], {"type": "function", "function": {"name": "add"}}, False)
    assert named.choice == "add" and named.parallel is False and [f.name for f in named.offered()] == ["add"]
    assert named.openai_choice() == {"type": "function", "function": {"name": "add"}}
    assert named.wire()["tools"] == [WEATHER, ADD] or named.wire()["tools"][1]["function"]["name"] == "add"


@pytest.mark.parametrize("tools, choice, words", [
    ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "tool_choice.function.name 'nope' is not one"),
    ([WEATHER], "always", "tool_choice 'always' is not one of"),
    ([WEATHER], 7, "tool_choice must be"),
    ([WEATHER], {"type": "function", "function": "get_weather"}, "tool_choice must be"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "s": {"type": "string", "pattern": "abc"}}}}}], None, "cannot express it"),
    (None, "required", "tool_choice needs tools"),
    ([{"type": "function", "function": {"name": "a b"}}], None, "tools[0].function.name must be"),
    ([{"type": "retrieval"}], None, "tools[0] must be"),
    ([WEATHER, WEATHER], None, "'get_weather' is given twice"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}], None,
     "tools[0].function.parameters must be a JSON schema of an object"),
    ([{"type": "function", "function": {"name": "f", "strict": True, "parameters": {"type": "object", "properties": {
        "n": {"type": "integer", "maximum": 3}}}}}], None,
     "tools[0].function.parameters: the grammar cannot enforce `maximum` at #/properties/n"),
    ([{"type": "function", "function": {"name": "f", "strict": "yes"}}], None, "tools[0].function.strict must be"),
    ("get_weather", None, "tools must be a list"),
])
def test_bad_tools_are_refused_naming_the_field(tools, choice, words):
    with pytest.raises(SchemaError) as info:
        Toolset.from_openai(tools, choice)
    assert words in str(info.value) and isinstance(info.value, ConfigError)


def test_problem():
    auto = Toolset.from_openai([WEATHER, ADD])
    assert auto.problem([], "stop") is None  # auto: a text answer is allowed
    assert auto.problem([PARIS, {"name": "add", "arguments": {"a": 1, "b": 2}}], "stop") is None
    assert "['a']" in auto.problem([{"name": "add", "arguments": {"a": "1", "b": 2}}], "stop")
    assert "'city' is a required property" in auto.problem([{"name": "get_weather", "arguments": {}}], "stop")
    assert "not a function offered" in auto.problem([{"name": "rm", "arguments": {}}], "stop")
    assert "begun but not finished (max_tokens)" in auto.problem([], "length", unfinished=True)
    required = Toolset.from_openai([WEATHER], "required", False)
    assert required.problem([], "length") == "no tool call (cut off by max_tokens)"
    assert "parallel_tool_calls is false" in required.problem([PARIS, PARIS], "stop")


def test_a_tool_without_strict_takes_what_the_grammar_cannot_enforce_and_its_calls_are_checked():
    """Regression (BFCL's parallel_multiple_145): a function whose parameter had `maximum` was a 400, though OpenAI
    takes it; pydantic's Field(le=...) makes such tools. Without `strict: true` the call grammar leaves `maximum`
    out, and the call is validated against the whole schema (the cascade's keep rule, the trace's `valid`)."""
    fee = {"type": "function", "function": {"name": "pay", "parameters": {"type": "object", "properties": {
        "fee": {"type": "number", "minimum": 0, "maximum": 3}}, "required": ["fee"]}}}
    tools = Toolset.from_openai([fee], "required")
    assert tools is not None and tools.functions[0].grammar_parameters == {
        "type": "object", "properties": {"fee": {"type": "number"}}, "required": ["fee"]}
    assert "maximum" not in toolcalls.grammar(tools) and "fee" in toolcalls.grammar(tools)
    assert "5 is greater than the maximum of 3" in tools.problem([{"name": "pay", "arguments": {"fee": 5}}], "stop")
    assert tools.problem([{"name": "pay", "arguments": {"fee": 2}}], "stop") is None
    assert "strict" not in tools.openai()[0]["function"]  # what the worker rebuilds it from: the same loosening
    strict = Toolset.from_openai([{**fee, "function": {**fee["function"], "strict": False}}])
    assert strict is not None and strict.functions[0].grammar_parameters == tools.functions[0].grammar_parameters


def test_the_call_grammar_and_the_parser_agree():
    tools = Toolset.from_openai([WEATHER, ADD], "required")
    gbnf = toolcalls.grammar(tools)
    assert gbnf.startswith('root ::= call ( "\\n" call )*\ncall ::= "<tool_call>\\n" call-json "\\n</tool_call>"')
    assert "call-json ::=" in gbnf and "\nroot ::=" not in gbnf[10:]
    one = toolcalls.grammar(Toolset.from_openai([WEATHER], {"type": "function", "function": {"name": "get_weather"}},
                                                False))
    assert one.startswith("root ::= call\n") and '"\\"get_weather\\""' in one and "add" not in one
    text = ('I will check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>')
    assert toolcalls.parse(text) == [PARIS, {"name": "add", "arguments": {"a": 1, "b": 2}}]
    assert toolcalls.parse('<tool_call>\n{"name": "add", "arguments": {"a": 1,\n</tool_call>') == []
    tricky = '<tool_call>\n{"name": "echo", "arguments": {"s": "}\\n</tool_call>"}}\n</tool_call>'
    assert toolcalls.parse(tricky) == [{"name": "echo", "arguments": {"s": "}\n</tool_call>"}}]


def test_each_functions_defs_keep_resolving_under_its_own_prefix():
    nested = {"type": "function", "function": {"name": "ship", "parameters": {
        "type": "object", "properties": {"to": {"$ref": "#/$defs/Address"}}, "required": ["to"],
        "$defs": {"Address": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}}}
    schema = toolcalls.call_schema(Toolset.from_openai([WEATHER, nested]).functions)
    assert set(schema["$defs"]) == {"x--f1-def-0"}
    assert schema["anyOf"][1]["properties"]["arguments"]["properties"]["to"] == {"$ref": "#/$defs/x--f1-def-0"}
    toolcalls.grammar(Toolset.from_openai([WEATHER, nested], "required"))  # the converter resolves it


def test_template_messages_take_arguments_as_objects():
    history = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 1, \"b\": 2}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "3"}]
    out = toolcalls.template_messages(history)
    assert out[0]["content"] == "" and out[0]["tool_calls"][0]["function"]["arguments"] == {"a": 1, "b": 2}
    assert history[0]["content"] is None  # the caller's messages are not changed


def test_format_of_a_template():
    assert toolcalls.format_of("{% if tools %}...<tool_call>...{% endif %}") == "hermes"
    assert toolcalls.format_of("{{ messages }}") is None and toolcalls.format_of(None) is None


# ---------------------------------------------------------------- orchestration (FAKE model sessions)

TOOLS_ROUTE = "  tools: {models: [small, big], strategy: cascade, min_logprob: -0.5}\npipelines:"
SURE = -0.1


def tools_registry():
    return fake_registry(FAKE_YAML.replace("pipelines:", TOOLS_ROUTE, 1))


def test_a_request_with_tools_goes_to_the_tools_task_and_the_worker_gets_them():
    tools = Toolset.from_openai([WEATHER, ADD], "required")
    rt = FakeRuntime(tools_registry(), replies={"small": Reply("", tool_calls=[PARIS], mean_logprob=SURE,
                                                               finish_reason="tool_calls")})
    run = ask(rt, "What is the weather in Paris? Then translate it.", tools=tools)
    assert rt.routed == [] and rt.models_called() == ["small"]
    assert run.answer.route.task == "tools" and run.answer.tool_calls == [PARIS]
    assert run.answer.finish_reason == "tool_calls"
    req = rt.records[0].request
    assert req.tools == tools.openai() and req.tool_choice == "required" and req.parallel_tool_calls is True


def test_a_call_that_breaks_its_schema_hands_over_to_the_next_model():
    tools = Toolset.from_openai([ADD], "required")
    bad = {"name": "add", "arguments": {"a": "one"}}
    rt = FakeRuntime(tools_registry(), replies={
        "small": Reply("", tool_calls=[bad], mean_logprob=SURE, finish_reason="tool_calls"),
        "big": Reply("", tool_calls=[{"name": "add", "arguments": {"a": 1, "b": 2}}], finish_reason="tool_calls")})
    run = ask(rt, "add one and two", tools=tools)
    assert rt.models_called() == ["small", "big"]
    first, last = run.answer.steps
    assert first["accepted"] is False and "call 1 (add)" in first["checks"][0]
    assert last["valid"] is True and run.answer.tool_calls[0]["arguments"] == {"a": 1, "b": 2}


def test_auto_lets_the_model_answer_in_text():
    tools = Toolset.from_openai([WEATHER])
    rt = FakeRuntime(tools_registry(), replies={"small": Reply("Hello!", mean_logprob=SURE)})
    run = ask(rt, "hi", tools=tools)
    assert run.text == "Hello!" and run.answer.tool_calls == [] and run.answer.steps[-1]["accepted"] is True


def test_a_model_that_cannot_call_tools_is_a_clear_error():
    tools = Toolset.from_openai([WEATHER])
    rt = FakeRuntime(no_tools=frozenset({"big"}))
    run = ask(rt, "weather?", model_id="big", tools=tools, raises=False)
    assert isinstance(run.error, ConfigError) and "big cannot call tools" in str(run.error)


def test_tools_and_a_response_format_together_are_refused():
    rt = FakeRuntime()
    run = ask(rt, "x", tools=Toolset.from_openai([WEATHER]), output=from_openai({"type": "json_object"}),
              raises=False)
    assert isinstance(run.error, ConfigError) and "send one or the other" in str(run.error) and rt.records == []


def test_the_cloud_is_sent_the_tools_and_its_calls_come_back_parsed():
    tools = Toolset.from_openai([WEATHER], "required")
    cloud = FakeCloud(texts=[])
    cloud.tool_calls = [{"id": "call_9", "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}]
    rt = FakeRuntime(cloud=cloud)
    run = ask(rt, "weather in Paris", model_id="cloud", tools=tools)
    assert cloud.calls[0]["tools"] == tools.wire()
    assert run.answer.tool_calls == [PARIS] and run.answer.steps[-1]["valid"] is True


# ---------------------------------------------------------------- the worker's "auto" reading (FAKE chunks)

class _Chunks:
    """FAKE llama-cpp-python completion chunks of `pieces` (closable, as a generator is)."""

    def __init__(self, pieces, finish="stop"):
        self.items = [{"choices": [{"text": p, "finish_reason": None}]} for p in pieces]
        self.items.append({"choices": [{"text": "", "finish_reason": finish}]})
        self.closed = False

    def __iter__(self):
        for item in self.items:
            if self.closed:
                return
            yield item

    def close(self):
        self.closed = True


def _free(pieces, names=("get_weather",)):
    from swarm_edge.workers.gguf_calls import Calls

    calls = Calls.__new__(Calls)
    calls.format, calls.names = "hermes", set(names)
    gen = calls._free(_Chunks(pieces))
    shown = []
    try:
        while True:
            text, _, _ = next(gen)
            shown.append(text)
    except StopIteration as stop:
        return "".join(shown), stop.value


@pytest.mark.parametrize("pieces, shown, said, triggered", [
    (["Hello", " there"], "Hello there", "Hello there", False),
    (["I will check.", "\n<tool", "_call>\n{"], "I will check.\n", "I will check.\n", True),
    (["```json\n", '{"name": "get_', 'weather", "arguments"'], "", "", True),
    (['{"name": "Ada", "age": 3}'], '{"name": "Ada", "age": 3}', '{"name": "Ada", "age": 3}', False),
    (["```python\nprint(1)\n```"], "```python\nprint(1)\n```", "```python\nprint(1)\n```", False),
    (["<tool"], "<tool", "<tool", False),  # held back, then shown when the answer ends without a call
])
def test_auto_streams_text_and_stops_where_a_call_begins(pieces, shown, said, triggered):
    assert _free(pieces) == (shown, (said, triggered))


# ---------------------------------------------------------------- the API's and the cloud's shapes

def test_ollama_history_gets_openai_ids_and_json_arguments():
    from swarm_edge.api.schemas import OllamaChatRequest

    body = OllamaChatRequest(model="m", messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                          "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18C"}])
    _, asked, answered = body.plain_messages()
    call = asked["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert answered["tool_call_id"] == call["id"]


def test_cloud_call_pieces_are_checked_and_restored_inside_strings():
    from swarm_edge.cloud import CloudResult
    from swarm_edge.cloud_wire import add_calls, restore_calls
    from swarm_edge.errors import CloudUnavailableError
    from swarm_edge.redact import Redactor

    res = CloudResult("m")
    add_calls(res, [{"index": 0, "id": "c1", "function": {"name": "send", "arguments": ""}}])
    add_calls(res, [{"index": 0, "function": {"arguments": '{"to": "[EMAIL_1]"'}}])
    add_calls(res, [{"index": 0, "function": {"arguments": "}"}}])
    assert res.tool_calls == [{"id": "c1", "name": "send", "arguments": '{"to": "[EMAIL_1]"}'}]
    redactor = Redactor()
    redactor.redact('a "quoted"\nperson@example.com')
    res.tool_calls[0]["arguments"] = json.dumps({"to": redactor.redact('x "q"@example.com')})
    restore_calls(res, redactor)
    assert json.loads(res.tool_calls[0]["arguments"])["to"] == 'x "q"@example.com'
    with pytest.raises(CloudUnavailableError, match="malformed tool call"):
        add_calls(res, [{"index": 0, "function": "send"}])
