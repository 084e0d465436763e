"""Tool calls through a real daemon with real llama.cpp: qwen2.5-coder-0.5b (its GGUF's template renders tools,
hermes format) on the `tools` route, smollm2-135m (no tool support) beside it. Real clients: the openai SDK
(plain, streamed and reassembled by the SDK), the ollama client with a Python function, and LangChain's
ChatOpenAI running a two-step tool loop."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import openai
import pytest

from swarm_edge.config import DEFAULT_CONFIG
from swarm_edge.registry import load_registry
from tests.api.conftest import openai_sdk, serve

pytestmark = pytest.mark.real_model

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city, e.g. Paris", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"],
        "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                   "required": ["a", "b"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather like in Paris right now?"}]


def tools_yaml(model_files) -> str:
    default = load_registry(DEFAULT_CONFIG)

    def files(mid: str) -> str:
        f = default.get(mid).files[0]
        return (f"    files:\n      - name: {f.name}\n        size: {f.size}\n        sha256: {f.sha256}\n"
                f"        sources: [{{path: \"{model_files[mid]['model']}\"}}]\n")
    return ("version: 1\ndefault_task: chat\nmodels:\n"
            "  - id: qwen2.5-coder-0.5b\n    format: gguf\n    tasks: [tools]\n    n_ctx: 2048\n    max_tokens: 96\n"
            + files("qwen2.5-coder-0.5b") +
            "  - id: smollm2-135m\n    format: gguf\n    tasks: [chat]\n    n_ctx: 1024\n    max_tokens: 32\n"
            + files("smollm2-135m") +
            "routes:\n  chat: {keywords: [hello], models: [smollm2-135m]}\n"
            "  tools: {models: [qwen2.5-coder-0.5b]}\n  json: {models: [qwen2.5-coder-0.5b]}\n")


@pytest.fixture(scope="module")
def tools_daemon(model_files, tmp_path_factory, calibrated_home):
    path = tmp_path_factory.mktemp("tools") / "models.yaml"
    path.write_text(tools_yaml(model_files))
    yield from serve(path, calibrated_home)


@pytest.fixture(scope="module")
def sdk(tools_daemon):
    yield from openai_sdk(tools_daemon)


def _weather_call(call) -> dict:
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert isinstance(args["city"], str) and set(args) <= {"city", "unit"}
    return args


def test_required_gives_a_call_that_follows_the_schema(sdk):
    done = sdk.chat.completions.create(model="auto", messages=ASK, tools=[WEATHER, ADD], tool_choice="required",
                                       temperature=0)
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls, choice
    assert all(c.function.name in ("get_weather", "add") for c in choice.message.tool_calls)
    swarm = done.model_extra["swarm"]
    assert swarm["route"]["task"] == "tools" and swarm["model"] == "qwen2.5-coder-0.5b"
    assert swarm["steps"][-1]["valid"] is True


def test_a_named_function_without_parallel_calls_is_exactly_one_call(sdk):
    done = sdk.chat.completions.create(model="qwen2.5-coder-0.5b", messages=ASK, tools=[WEATHER, ADD],
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                       parallel_tool_calls=False, temperature=0)
    calls = done.choices[0].message.tool_calls
    assert len(calls) == 1 and _weather_call(calls[0])["city"]


def test_streamed_calls_are_reassembled_by_the_sdk(sdk):
    with sdk.chat.completions.stream(model="auto", messages=ASK, tools=[WEATHER], tool_choice="required",
                                     temperature=0) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    _weather_call(final.choices[0].message.tool_calls[0])


def test_a_two_step_loop_with_the_tool_result_in_the_history(sdk):
    first = sdk.chat.completions.create(model="auto", messages=ASK, tools=[WEATHER], tool_choice="required",
                                        temperature=0).choices[0].message
    call = first.tool_calls[0]
    history = ASK + [first.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 18, "sky": "clear"})}]
    second = sdk.chat.completions.create(model="auto", messages=history, tools=[WEATHER], temperature=0,
                                         max_tokens=60)
    choice = second.choices[0]
    # auto: the model may answer in words or call again; either way the answer has the shape asked for
    assert (choice.message.content or "").strip() or choice.message.tool_calls
    assert second.model_extra["swarm"]["steps"][-1]["valid"] is True


def test_bad_tool_requests_are_400s_naming_the_field(sdk, tools_daemon):
    with pytest.raises(openai.BadRequestError, match="smollm2-135m cannot call tools"):
        sdk.chat.completions.create(model="smollm2-135m", messages=ASK, tools=[WEATHER])
    with pytest.raises(openai.BadRequestError, match=r"tool_choice.function.name 'nope'"):
        sdk.chat.completions.create(model="auto", messages=ASK, tools=[WEATHER],
                                    tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(openai.BadRequestError, match=r"tools\[0\].function.parameters"):
        sdk.chat.completions.create(model="auto", messages=ASK, tools=[
            {"type": "function", "function": {"name": "f", "strict": True, "parameters": {"type": "object",
                                                                                          "properties": {
                "n": {"type": "integer", "minimum": 0}}}}}])
    orphan = ASK + [{"role": "tool", "tool_call_id": "call_x", "content": "18C"}]
    r = tools_daemon.http.post("/v1/chat/completions", json={"model": "auto", "messages": orphan, "tools": [WEATHER]})
    assert r.status_code == 400 and "messages[1]" in r.text and "answers no call" in r.text


def test_the_ollama_client_with_a_python_function(tools_daemon):
    import ollama

    def add(a: int, b: int) -> int:
        """Add two numbers.

        Args:
            a: the first number
            b: the second number
        """
        return a + b

    client = ollama.Client(host="http://swarm-edge", transport=httpx.HTTPTransport(uds=str(tools_daemon.socket)))
    r = client.chat(model="qwen2.5-coder-0.5b", messages=[{"role": "user", "content": "What is 17 plus 25?"}],
                    tools=[add], options={"temperature": 0})
    calls = r.message.tool_calls or []
    if calls:  # auto: the model chose to call
        assert calls[0].function.name == "add" and set(calls[0].function.arguments) == {"a", "b"}
    else:
        assert r.message.content.strip()


def test_langchain_binds_tools_and_runs_a_two_step_loop(tools_daemon):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return json.dumps({"city": city, "temp_c": 18})

    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(tools_daemon.socket)))
    llm = ChatOpenAI(model="auto", base_url="http://swarm-edge/v1", api_key="not-needed", http_client=http,
                     temperature=0, max_retries=0)
    messages = [HumanMessage("What is the weather like in Paris?")]
    ai = llm.bind_tools([get_weather], tool_choice="required").invoke(messages)
    assert ai.tool_calls and ai.tool_calls[0]["name"] == "get_weather"
    messages += [ai] + [ToolMessage(get_weather.invoke(c["args"]), tool_call_id=c["id"]) for c in ai.tool_calls]
    final = llm.bind_tools([get_weather]).invoke(messages)
    assert final.content or final.tool_calls
    http.close()


def readme_examples() -> list[tuple[str, str]]:
    """The README's structured-output and tool-call examples: (code, what it says it prints)."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("### Structured outputs and tool calls", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    return [(code, re.search(r"print\(.*\)\s+# (.*)", code).group(1)) for code in blocks]


def test_the_readme_examples_work_as_printed(sdk, capsys):
    """Each example runs and prints what its comment shows, field for field. The values come from greedy
    decoding, which may differ on another CPU: the shape is asserted (the fields, in order; a JSON call), and
    the values are reported when they differ from the README's, not failed on."""
    examples = readme_examples()
    assert len(examples) == 2
    for code, printed in examples:
        exec(code, {"client": sdk})  # noqa: S102 - our own README
        out = capsys.readouterr().out.strip()
        if printed.startswith("name="):  # a parsed pydantic model: the same fields, in order
            assert re.findall(r"(\w+)=", out) == re.findall(r"(\w+)=", printed), out
        else:  # a call: the function's name, then its arguments as JSON with the same keys
            name, _, args = out.partition(" ")
            assert name == printed.split(" ")[0] and json.loads(args).keys() == json.loads(
                printed.partition(" ")[2]).keys(), out
        if out != printed:
            print(f"README example printed {out!r} here, the README shows {printed!r}")
