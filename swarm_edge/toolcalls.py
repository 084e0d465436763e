"""Tool calls: OpenAI's `tools`, `tool_choice` and `parallel_tool_calls` read and checked, the call format of a
model's own chat template, the grammar that forces a well-formed call, and the calls read back out of the text.

Pure functions and plain data: the daemon checks requests with them, the worker (workers/gguf.py) renders and
constrains with them.

Call formats, recognised in the GGUF's chat template:
  hermes  <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>  (Qwen2.5, Hermes, SmolLM3, many more)
A model whose template has no tool support (no format recognised) is not offered tool requests.

A call's arguments are generated under the grammar of its function's parameter schema, so they always parse and
the required ones are there; they are validated against the schema afterwards as well (the grammar cannot bound
every value, and a call cut off by max_tokens is invalid). A function with `strict: true` may use only constraints
the grammar enforces (else a 400 names the one it cannot); without it, as OpenAI's default, the grammar enforces
what it can (`minimum`, `maximum` and the like are left to the check afterwards).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from swarm_edge.errors import SchemaError
from swarm_edge.structured import grammar_of, loosened, prepare

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_TOOLS = 128
HERMES = "hermes"
_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
TRIGGERS = {HERMES: "<tool_call>"}  # the text that starts a call in each format


def format_of(template: Any) -> str | None:
    """The call format a chat template renders tools in, or None when it cannot take tools."""
    if isinstance(template, str) and "<tool_call>" in template and "tools" in template:
        return HERMES
    return None


@dataclass(frozen=True)
class Function:
    """One function a model may call."""

    name: str
    description: str
    parameters: dict[str, Any]
    strict: bool = False
    grammar_parameters: dict[str, Any] | None = None  # what the grammar enforces (structured.loosened)

    def openai(self) -> dict[str, Any]:
        fn = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {"type": "function", "function": {**fn, "strict": True} if self.strict else fn}


@dataclass(frozen=True)
class Toolset:
    """The functions of a request, and what the model must do with them.

    choice: "auto" (text or calls, the model decides), "required" (at least one call) or a function's name (a call
    of that function). `parallel`: more than one call in one answer is allowed."""

    functions: tuple[Function, ...]
    choice: str = "auto"
    parallel: bool = True

    @classmethod
    def from_openai(cls, tools: Any, tool_choice: Any = None, parallel: Any = None,
                    where: str = "tools") -> Toolset | None:
        """From a request's fields (400s name the field); None when there are no tools or tool_choice is "none"."""
        if tools in (None, []):
            if tool_choice not in (None, "none", "auto"):
                raise SchemaError("tool_choice needs tools")
            return None
        if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
            raise SchemaError(f"{where} must be a list of at most {MAX_TOOLS} tools")
        functions = tuple(_function(t, f"{where}[{i}]", i) for i, t in enumerate(tools))
        names = [f.name for f in functions]
        if len(set(names)) < len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise SchemaError(f"{where}: the function name {dup!r} is given twice")
        choice = _choice(tool_choice, names)
        if choice == "none":
            return None
        if parallel is not None and not isinstance(parallel, bool):
            raise SchemaError("parallel_tool_calls must be true or false")
        made = cls(functions, choice, parallel is not False)
        grammar(made)  # the call grammar is built now: a schema it cannot take is a 400, not a failed generation
        return made

    def named(self, name: str) -> Function | None:
        return next((f for f in self.functions if f.name == name), None)

    def offered(self) -> tuple[Function, ...]:
        """The functions a forced call may use: the named one, or all."""
        return self.functions if self.choice in ("auto", "required") else (self.named(self.choice),)  # type: ignore

    def openai(self) -> list[dict[str, Any]]:
        """As OpenAI's `tools` (what the chat template renders and the cloud is sent)."""
        return [f.openai() for f in self.functions]

    def wire(self) -> dict[str, Any]:
        """The request fields that carry these tools (to the cloud)."""
        return {"tools": self.openai(), "tool_choice": self.openai_choice(), "parallel_tool_calls": self.parallel}

    def openai_choice(self) -> Any:
        return self.choice if self.choice in ("auto", "required") else {"type": "function",
                                                                         "function": {"name": self.choice}}

    def problem(self, calls: Sequence[dict[str, Any]] | None, finish_reason: str | None,
                unfinished: bool = False) -> str | None:
        """Why an answer's calls do not do what was asked, or None (`unfinished`: the model began a call that
        never ended, cut off by max_tokens)."""
        calls = list(calls or ())
        if unfinished:
            return "a tool call was begun but not finished" + (" (max_tokens)" if finish_reason == "length" else "")
        if not calls:
            if self.choice != "auto":
                return "no tool call" + (" (cut off by max_tokens)" if finish_reason == "length" else "")
            return None
        if len(calls) > 1 and not self.parallel:
            return f"{len(calls)} calls where parallel_tool_calls is false"
        from jsonschema import Draft202012Validator

        for i, call in enumerate(calls):
            fn = self.named(call.get("name", ""))
            if fn is None or fn not in self.offered():
                return f"call {i + 1} names {call.get('name')!r}, which is not a function offered"
            args = call.get("arguments")
            error = next(iter(Draft202012Validator(fn.parameters).iter_errors(args)), None)
            if error is not None:
                at = "".join(f"[{p!r}]" for p in error.absolute_path) or "the arguments"
                return f"call {i + 1} ({fn.name}): {at}: {error.message[:200]}"
        return None


def _function(tool: Any, where: str, index: int) -> Function:
    if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(
            tool.get("function"), dict):
        raise SchemaError(f"{where} must be {{\"type\": \"function\", \"function\": {{name, description, "
                          "parameters}}")
    fn = tool["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise SchemaError(f"{where}.function.name must be 1 to 64 letters, digits, '_', '.' or '-'")
    description = fn.get("description") or ""
    if not isinstance(description, str):
        raise SchemaError(f"{where}.function.description must be a string")
    params = fn.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    if not isinstance(params, dict) or params.get("type", "object") != "object":
        raise SchemaError(f"{where}.function.parameters must be a JSON schema of an object")
    strict = fn.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise SchemaError(f"{where}.function.strict must be true or false")
    # its definitions renamed apart from every other function's: all end up side by side in the call grammar.
    # Strict, every constraint must be one the grammar enforces; otherwise (OpenAI's default) the grammar enforces
    # what it can and the call is validated against the whole schema afterwards (Toolset.problem)
    prepared = prepare(params, f"{where}.function.parameters", prefix=f"x--f{index}-", strict=strict is True)
    return Function(name, description, prepared, strict is True, loosened(prepared)[0])


def _choice(tool_choice: Any, names: list[str]) -> str:
    if tool_choice is None:
        return "auto"
    if isinstance(tool_choice, str):
        if tool_choice in ("auto", "none", "required"):
            return tool_choice
        raise SchemaError(f"tool_choice {tool_choice!r} is not one of auto, none, required or a function")
    fn = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise SchemaError("tool_choice must be \"auto\", \"none\", \"required\" or "
                          "{\"type\": \"function\", \"function\": {\"name\": ...}}")
    if name not in names:
        raise SchemaError(f"tool_choice.function.name {name!r} is not one of the tools ({', '.join(names)})")
    return name


# ---------------------------------------------------------------- the model's side (hermes)

def call_schema(functions: Sequence[Function]) -> dict[str, Any]:
    """One JSON object naming one of `functions` with arguments valid for it. Each function's parameters were
    prepared with their definitions at their top under names of their own (x--fI-def-N): they are gathered at
    the top of this schema, where the references already point."""
    defs: dict[str, Any] = {}
    variants = []
    for fn in functions:
        params = dict(fn.grammar_parameters if fn.grammar_parameters is not None else fn.parameters)
        defs.update(params.pop("$defs", None) or {})
        variants.append({"type": "object", "properties": {"name": {"const": fn.name}, "arguments": params},
                         "required": ["name", "arguments"], "additionalProperties": False})
    schema: dict[str, Any] = variants[0] if len(variants) == 1 else {"anyOf": variants}
    return {**schema, "$defs": defs} if defs else schema


def grammar(tools: Toolset, fmt: str = HERMES) -> str:
    """GBNF that forces one call (or one or more, `parallel`) of the offered functions, in `fmt`."""
    if fmt != HERMES:
        raise SchemaError(f"tool call format {fmt!r} is not supported")
    body = grammar_of(call_schema(tools.offered()), "tools")
    body = re.sub(r"^root ::=", "call-json ::=", body, count=1, flags=re.MULTILINE)
    calls = 'call ( "\\n" call )*' if tools.parallel else "call"
    return f'root ::= {calls}\ncall ::= "<tool_call>\\n" call-json "\\n</tool_call>"\n{body}'


def parse(text: str, fmt: str = HERMES) -> list[dict[str, Any]]:
    """The whole calls in generated text, in order: [{"name", "arguments"}]. Each is read as one JSON value after
    its opening tag (so an argument that contains the closing tag does not cut it), and counts once its closing
    tag follows; a call cut off, or not a {name, arguments} object, is not one."""
    calls, decoder, at = [], json.JSONDecoder(), 0
    while (start := text.find(_OPEN, at)) >= 0:
        at = start + len(_OPEN)
        body = text[at:]
        lead = len(body) - len(body.lstrip())
        try:
            obj, end = decoder.raw_decode(body, lead)
        except ValueError:
            continue
        rest = body[end:].lstrip()
        if rest.startswith(_CLOSE) and isinstance(obj, dict) and isinstance(obj.get("name"), str):
            calls.append({"name": obj["name"], "arguments": obj.get("arguments", {})})
            at += len(body) - len(rest) + len(_CLOSE)
    return calls


def template_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as chat templates expect them (Hugging Face's convention): a call's arguments as an object, not
    OpenAI's JSON string; content never None."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("content") is None:
            m["content"] = ""
        if m.get("tool_calls"):
            fixed = []
            for c in m["tool_calls"]:
                fn = dict(c.get("function") or c)
                if isinstance(fn.get("arguments"), str):
                    try:
                        fn["arguments"] = json.loads(fn["arguments"])
                    except ValueError:
                        pass
                fixed.append({"type": "function", "function": fn})
            m["tool_calls"] = fixed
        out.append(m)
    return out


__all__ = ["HERMES", "TRIGGERS", "Function", "Toolset", "call_schema", "format_of", "grammar", "parse",
           "template_messages"]
