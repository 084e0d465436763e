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
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from swarm_edge.errors import ConfigError, SchemaError

MAX_DEPTH = 32            # nesting of a schema: the converter and the validator recurse once per level
MAX_SCHEMA_BYTES = 256 << 10
MAX_GRAMMAR_BYTES = 256 << 10
MAX_REPEAT = 1000         # minLength/maxLength/minItems/maxItems and {m,n}: llama.cpp's grammar parser refuses
                          # (and past ~10^5 crashes on) large repetition counts, and the converter spells them out
NESTED_REPEAT = re.compile(r"\([^()]*[+*}][^()]*\)\s*[+*{]")  # (a+)+ : exponential to check, so refused

# The keywords that constrain a value (JSON Schema 2020-12's applicator and validation vocabularies). Anything
# else describes and never constrains (title, description, default, examples, $defs, a tool's made-up
# "optional": validators ignore unknown keywords), so any node may carry it.
CONSTRAINTS = frozenset({
    "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems", "maxContains", "minContains",
    "contains", "maxProperties", "minProperties", "required", "dependentRequired", "dependentSchemas", "properties",
    "patternProperties", "additionalProperties", "propertyNames", "items", "prefixItems", "unevaluatedItems",
    "unevaluatedProperties", "allOf", "anyOf", "oneOf", "not", "if", "then", "else", "$ref", "$dynamicRef", "format"})
STRING_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})
ANY = "*"  # _unexpressed: the node may be any value (the grammar's {})
TYPES = frozenset({"string", "number", "integer", "boolean", "null", "object", "array"})
OBJECT = {"type": "object"}  # json_object mode: any JSON object


@dataclass(frozen=True)
class OutputFormat:
    """What an answer must be: a JSON object (`json_object`) or JSON valid against `schema`."""

    schema: dict[str, Any]
    name: str = "json_object"
    strict: bool = True
    grammar_schema: dict[str, Any] | None = None  # not strict: the schema the grammar enforces (`loosened`)
    unenforced: tuple[str, ...] = ()              # ... and what it leaves to the check after the answer

    @classmethod
    def build(cls, schema: dict[str, Any], *, name: str = "json_object", strict: bool = True,
              where: str = "response_format") -> OutputFormat:
        """Check `schema` (`where` names the request field in errors), its grammar included; keep it prepared.
        Strict, every constraint must be one the grammar enforces; otherwise the grammar enforces what it can and
        `problem` checks the rest."""
        prepared = prepare(schema, where, strict=strict)
        grammar_schema, left = (prepared, []) if strict else loosened(prepared)
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
    return OutputFormat.build(schema, name=name, strict=bool(strict) if strict is not None else False,
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
    dropped = [message for _, _, message in _unexpressed(schema, "#", schema)]
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


def _branch(node: dict[str, Any]) -> tuple[set[str], list[tuple[str, Any]]]:
    """The keywords the converter's rule for `node` enforces, and the subschemas it visits (with their paths).

    Mirrors SchemaConverter.visit in llama_cpp/llama_grammar.py: the first branch that matches wins, and whatever
    else the node says is dropped."""
    t = node.get("type")
    if "$ref" in node:
        return {"$ref"}, []
    if "oneOf" in node:  # generated as anyOf: "exactly one" is not enforced (unless there is only one)
        return ({"oneOf"} if len(node["oneOf"]) == 1 else set()), [(f"oneOf/{i}", s)
                                                                  for i, s in enumerate(node["oneOf"])]
    if "anyOf" in node:
        return {"anyOf"}, [(f"anyOf/{i}", s) for i, s in enumerate(node["anyOf"])]
    if isinstance(t, list):
        return {"type"}, []
    if "const" in node:
        return {"const", "type"}, []
    if "enum" in node:
        return {"enum", "type"}, []
    if t in (None, "object") and ("properties" in node or node.get("additionalProperties", True) is not True):
        subs = [(f"properties/{k}", s) for k, s in node.get("properties", {}).items()]
        if isinstance(node.get("additionalProperties"), dict):
            subs.append(("additionalProperties", node["additionalProperties"]))
        props = node.get("properties", {})
        required = {"required"} if set(node.get("required", [])) <= set(props) else set()  # else one never comes
        return {"type", "properties", "additionalProperties"} | required, subs
    if t in (None, "array") and ("items" in node or "prefixItems" in node):
        if "prefixItems" in node and node.get("items") in (None, False):  # a tuple, exactly
            return {"type", "prefixItems", "items"}, [(f"prefixItems/{i}", s)
                                                      for i, s in enumerate(node["prefixItems"])]
        return {"type", "items", "minItems", "maxItems"}, [("items", node["items"])]
    if t in (None, "string") and "pattern" in node:
        return {"type", "pattern"}, []
    if t in (None, "string") and node.get("format") in STRING_FORMATS:
        return {"type", "format"}, []
    if t == "string" and ("minLength" in node or "maxLength" in node):
        return {"type", "minLength", "maxLength"}, []
    return {"type"}, []


def _unexpressed(node: Any, path: str, root: dict[str, Any]):
    """Each constraint in `node` (and below) the grammar would not enforce, as (the node, what `loosened` does about
    it, "`keyword` at path"): a keyword to leave out of the grammar's copy, ANY to let the node be any value, or
    None where nothing can be left out (the schema is refused, strict or not)."""
    if not isinstance(node, dict):  # `true` / `false` schemas
        if node is False:
            yield node, None, f"a `false` schema at {path}"
        return
    t = node.get("type")
    if isinstance(t, str) and t not in TYPES or isinstance(t, list) and any(x not in TYPES for x in t):
        yield node, None, f"`type` {json.dumps(t)} at {path}"
    ref = node.get("$ref")
    if isinstance(ref, str) and not ref.startswith("#/"):
        yield node, None, f"`$ref` {ref!r} at {path} (only local references, #/...)"
    if "allOf" in node:
        yield node, "allOf", f"`allOf` at {path}"
    enforced, subs = _branch(node)
    constraints = set(node) & CONSTRAINTS
    if isinstance(t, str) and t != "string":
        constraints.discard("format")  # `format` constrains strings only ("float" on a number is a note)
    for key in ("minLength", "maxLength", "minItems", "maxItems"):
        if isinstance(node.get(key), int) and node[key] > MAX_REPEAT:
            yield node, key, f"`{key}` {node[key]} at {path} (at most {MAX_REPEAT})"
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        if "\\" in pattern:
            yield node, "pattern", (f"`pattern` {pattern[:40]!r} at {path}: escapes (\\d, \\w, \\.) are not "
                                    "supported, write [0-9], [.]")
        if NESTED_REPEAT.search(pattern):
            yield node, "pattern", (f"`pattern` {pattern[:40]!r} at {path}: a repeated group with a repetition "
                                    "inside, as in (a+)+")
        if any(int(n) > MAX_REPEAT for n in re.findall(r"\{(\d+)(?:,(\d*))?\}", pattern) for n in n if n):
            yield node, "pattern", f"`pattern` {pattern[:40]!r} at {path}: a repetition count over {MAX_REPEAT}"
    if not constraints and node:
        yield node, ANY, f"an untyped schema (any value) at {path}"
    for key in sorted(constraints - enforced - {"allOf"}):
        yield node, key, f"`{key}` at {path}"
    for sub_path, sub in subs:
        yield from _unexpressed(sub, f"{path}/{sub_path}", root)
    for name, sub in (node.get("$defs") or {}).items() if path == "#" else ():  # all at the top (prepare)
        yield from _unexpressed(sub, f"#/$defs/{name}", root)


def loosened(schema: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A schema that is not strict (a tool without `strict: true`, a response format with `strict: false`, Ollama's
    `format`), as its grammar takes it: a copy without the constraints the grammar cannot enforce (`minimum`,
    `uniqueItems`, ...), which the answer is validated against afterwards, and what was left out. Raises
    SchemaError for what cannot be left out (a `false` schema, a reference out of the document)."""
    copy = json.loads(json.dumps(schema))
    left: list[str] = []
    for _ in range(4):  # leaving one keyword out can change which rule a node gets: look again
        found = list(_unexpressed(copy, "#", copy))
        if not found:
            return copy, left
        for node, key, message in found:
            if key is None:
                raise SchemaError(message)
            left.append(message)
            if key == ANY:
                node.clear()  # {}: the converter's "any value"
            elif key == "oneOf":
                node["anyOf"] = node.pop("oneOf")  # "exactly one" becomes "at least one"
            else:
                node.pop(key, None)
    raise SchemaError("the schema cannot be loosened into one the grammar takes")


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
