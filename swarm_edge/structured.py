"""Structured outputs: answers that must be JSON, or JSON that follows a schema.

A request's format (OpenAI `response_format`, Ollama `format`) becomes an `OutputFormat` in the daemon, before any
model is used:
- the schema must be a valid JSON schema (Draft 2020-12);
- strict (OpenAI's `strict: true`), it may use only what the grammar converter (llama.cpp's JSON-schema-to-GBNF
  converter, the copy llama-cpp-python ships) turns into grammar rules. A keyword the converter would drop without a
  word (`minimum`, `uniqueItems`, `not`, a `maxLength` beside a `pattern`, a `format` it does not know, ...) is
  refused with its place in the schema named: an answer is never less constrained than the caller asked;
- not strict (OpenAI's default, Ollama's `format`, a tool without `strict: true`: what pydantic models with
  `Field(ge=...)` produce), the grammar enforces a copy without those keywords (`loosened`) and the answer is
  validated against the whole schema afterwards: an answer that breaks one is reported (the trace's `valid`,
  `problem`) and, on a routed request, cascaded like any other answer without its shape;
- the converter must take it: it runs here once, so a schema it chokes on is a 400 too, not a failed generation
  (the worker converts the same schema again, with the same code, inside llama-cpp-python).
After generation, `OutputFormat.problem(text)` parses the answer and validates it against the schema.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from swarm_edge.errors import ConfigError, SchemaError
from swarm_edge.grammar_fit import loosened, unexpressed

MAX_DEPTH = 32            # nesting of a schema: the converter and the validator recurse once per level
MAX_SCHEMA_BYTES = 256 << 10
MAX_GRAMMAR_BYTES = 256 << 10
OBJECT = {"type": "object"}  # json_object mode: any JSON object


@dataclass(frozen=True)
class OutputFormat:
    """What an answer must be: a JSON object (`json_object`) or JSON valid against `schema`."""

    schema: dict[str, Any]
    name: str = "json_object"
    strict: bool = True
    grammar_schema: dict[str, Any] | None = None  # the schema the grammar enforces (`loosened`)
    unenforced: tuple[str, ...] = ()              # ... and what it leaves to the check after the answer

    @classmethod
    def build(cls, schema: dict[str, Any], *, name: str = "json_object", strict: bool = True,
              where: str = "response_format") -> OutputFormat:
        """Check `schema` (`where` names the request field in errors), its grammar included; keep it prepared.
        Strict, every constraint must be one the grammar enforces; otherwise the grammar enforces what it can and
        `problem` checks the rest."""
        prepared = prepare(schema, where, strict=strict)
        grammar_schema, left = loosened(prepared)  # strict: nothing is left out; `{}` becomes ANY_VALUE
        grammar_of(grammar_schema, where)
        return cls(schema=prepared, name=name, strict=strict, grammar_schema=grammar_schema, unenforced=tuple(left))

    @property
    def generation_schema(self) -> dict[str, Any]:
        """The schema the worker builds its grammar from."""
        return self.grammar_schema if self.grammar_schema is not None else self.schema

    def problem(self, text: str) -> str | None:
        """Why `text` is not an answer in this format (it does not parse, or it does not validate), or None."""
        try:
            value = json.loads(text)
        except ValueError as exc:
            return f"the answer is not JSON ({exc})"
        from jsonschema import Draft202012Validator

        error = next(iter(Draft202012Validator(self.schema).iter_errors(value)), None)
        if error is None:
            return None
        at = "".join(f"[{p!r}]" for p in error.absolute_path) or "the top level"
        return f"the answer does not follow the schema at {at}: {error.message[:200]}"

    def openai(self) -> dict[str, Any]:
        """As OpenAI's `response_format` (what the cloud is sent)."""
        if self.name == "json_object" and self.schema == OBJECT:
            return {"type": "json_object"}
        return {"type": "json_schema", "json_schema": {"name": self.name, "schema": self.schema, "strict": self.strict}}


def from_openai(response_format: dict[str, Any] | None) -> OutputFormat | None:
    """OpenAI's `response_format`: {type: text} (None), {type: json_object}, {type: json_schema, json_schema: {...}}."""
    if not response_format:
        return None
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputFormat.build(OBJECT, where="response_format")
    if kind != "json_schema":
        raise SchemaError(f"response_format.type {kind!r} is not one of text, json_object, json_schema")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise SchemaError("response_format.json_schema must be an object with name and schema")
    name = spec.get("name")
    if not isinstance(name, str) or not name or len(name) > 64:
        raise SchemaError("response_format.json_schema.name must be a string of 1 to 64 characters")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise SchemaError("response_format.json_schema.schema must be a JSON schema (an object)")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise SchemaError("response_format.json_schema.strict must be true or false")
    return OutputFormat.build(schema, name=name, strict=strict is True,
                              where="response_format.json_schema.schema")


def from_ollama(fmt: Any) -> OutputFormat | None:
    """Ollama's `format`: "json" (any JSON object... Ollama allows any JSON value; an object is what clients expect)
    or a JSON schema."""
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return OutputFormat.build(OBJECT, where="format")
    if isinstance(fmt, dict):
        return OutputFormat.build(fmt, name="format", strict=False, where="format")  # Ollama has no strict mode
    raise SchemaError(f"format must be \"json\" or a JSON schema (an object), not {json.dumps(fmt)[:80]}")


def prepare(schema: dict[str, Any], where: str, prefix: str = "x--", *, strict: bool = True) -> dict[str, Any]:
    """`schema`, checked (`check`), with every $defs entry (at any depth) moved to the top under a name of its
    own, `prefix` + def-N, and every $ref pointed there: the converter names grammar rules after the last part of
    a reference, so two definitions of one name, or one named like a property or a built-in rule, would share a
    rule, and a recursive one with a name outside [A-Za-z0-9-] would leave an undefined rule."""
    check(schema, where, prepared=False)
    names: dict[str, str] = {}

    def collect(node: Any, pointer: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{pointer}/{key.replace('~', '~0').replace('/', '~1')}"
                if key in ("$defs", "definitions") and isinstance(value, dict):
                    for name in value:
                        names[f"{here}/{name.replace('~', '~0').replace('/', '~1')}"] = f"{prefix}def-{len(names)}"
                collect(value, here)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                collect(value, f"{pointer}/{i}")

    collect(schema, "#")
    defs: dict[str, Any] = {}

    def rewrite(node: Any, pointer: str) -> Any:
        if isinstance(node, list):
            return [rewrite(v, f"{pointer}/{i}") for i, v in enumerate(node)]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            here = f"{pointer}/{key.replace('~', '~0').replace('/', '~1')}"
            if key in ("$defs", "definitions") and isinstance(value, dict):
                for name, sub in value.items():
                    at = f"{here}/{name.replace('~', '~0').replace('/', '~1')}"
                    defs[names[at]] = rewrite(sub, at)
            elif key == "$ref" and isinstance(value, str):
                if value not in names:
                    raise SchemaError(f"{where}: `$ref` {value!r} at {pointer}: only references into $defs or "
                                      "definitions are supported")
                out[key] = f"#/$defs/{names[value]}"
            else:
                out[key] = rewrite(value, here)
        return out

    prepared = rewrite(schema, "#")
    if defs:
        prepared["$defs"] = defs
    check(prepared, where, strict=strict)
    return prepared


def check(schema: dict[str, Any], where: str, *, prepared: bool = True, strict: bool = True) -> None:
    """Raise SchemaError unless `schema` is a valid JSON schema whose every constraint the grammar expresses
    (`prepared`: its definitions are all at the top, as `prepare` leaves them; only then are they all walked).
    Not `strict`: only what `loosened` cannot leave out of the grammar is refused."""
    try:
        size = len(json.dumps(schema))
    except (TypeError, ValueError, RecursionError) as exc:
        raise SchemaError(f"{where} is not JSON: {exc}") from None
    if size > MAX_SCHEMA_BYTES:
        raise SchemaError(f"{where} is {size:,} bytes; at most {MAX_SCHEMA_BYTES:,}")
    _depth(schema, where, 0)
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError as Invalid

    try:
        Draft202012Validator.check_schema(schema)
    except Invalid as exc:
        at = "/".join(str(p) for p in exc.absolute_path)
        raise SchemaError(f"{where} is not a valid JSON schema{f' (at {at})' if at else ''}: {exc.message[:200]}") \
            from None
    if not prepared:
        return
    if not strict:
        try:
            loosened(schema)
        except SchemaError as exc:
            raise SchemaError(f"{where}: the grammar cannot take {exc}") from None
        return
    dropped = [message for _, _, message in unexpressed(schema, "#", schema) if message]
    if dropped:
        raise SchemaError(f"{where}: the grammar cannot enforce {'; '.join(dropped[:5])}"
                          + (f" (and {len(dropped) - 5} more)" if len(dropped) > 5 else "")
                          + " - remove it, or leave `strict` out to have it checked after the answer")


def _depth(node: Any, where: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise SchemaError(f"{where} is nested more than {MAX_DEPTH} levels deep")
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        _depth(child, where, depth + 1)


@functools.cache
def _converter() -> ModuleType:
    """llama-cpp-python's llama_grammar.py, loaded on its own: it is pure Python, and importing the llama_cpp
    package would load the native library into this process (the daemon parses no model and runs no model)."""
    spec = importlib.util.find_spec("llama_cpp")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigError("structured outputs need llama-cpp-python (its JSON-schema-to-grammar converter)")
    source = importlib.util.spec_from_file_location("swarm_edge._llama_grammar",
                                                    Path(locations[0]) / "llama_grammar.py")
    assert source is not None and source.loader is not None
    module = importlib.util.module_from_spec(source)
    source.loader.exec_module(module)
    return module


def grammar_of(schema: dict[str, Any], where: str = "schema") -> str:
    """GBNF for `schema` (already checked)."""
    try:
        gbnf = _converter().json_schema_to_gbnf(json.dumps(schema))
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the converter raises ValueError, KeyError, AssertionError, ...
        raise SchemaError(f"{where}: the grammar converter cannot express it: {type(exc).__name__}: "
                          f"{str(exc)[:200]}") from None
    if len(gbnf) > MAX_GRAMMAR_BYTES:
        raise SchemaError(f"{where}: its grammar would be {len(gbnf):,} bytes; at most {MAX_GRAMMAR_BYTES:,}")
    return gbnf


__all__ = ["OBJECT", "OutputFormat", "SchemaError", "check", "from_ollama", "from_openai", "grammar_of", "loosened",
           "prepare"]
