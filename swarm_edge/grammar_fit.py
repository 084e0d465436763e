"""What llama.cpp's JSON-schema-to-grammar converter enforces of a schema, and the copy of a schema it can take.

The converter (llama_cpp/llama_grammar.py, SchemaConverter.visit) picks one rule per schema node and drops every
other keyword of the node without a word. `unexpressed` mirrors that choice and names each constraint that would
be dropped; structured.py refuses them for strict schemas, and `loosened` leaves them out of the grammar's copy of a
schema that is not strict (the answer is then validated against the whole schema).
"""

from __future__ import annotations

import json
import re
from typing import Any

from swarm_edge.errors import SchemaError

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
ANY = "*"  # _unexpressed: the node may be any value (becomes ANY_VALUE)
# "any value" as the converter takes it: it reads an empty schema `{}` as any *object*, and an empty `items` as none
ANY_VALUE = {"type": ["string", "number", "integer", "boolean", "null", "object", "array"]}
TYPES = frozenset({"string", "number", "integer", "boolean", "null", "object", "array"})


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


def unexpressed(node: Any, path: str, root: dict[str, Any]):
    """Each constraint in `node` (and below) the grammar would not enforce, as (the node, what `loosened` does about
    it, "`keyword` at path"): a keyword to leave out of the grammar's copy, ANY to let the node be any value, or
    None where nothing can be left out (the schema is refused, strict or not)."""
    if not isinstance(node, dict):  # `true` / `false` schemas
        if node is False:
            yield node, None, f"a `false` schema at {path}"
        return
    if not node:  # {}: any value, which the converter would narrow to an object; no constraint is lost
        yield node, ANY, ""
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
        if key == "required":  # naming a key `properties` lacks: the grammar never writes it, no answer would pass
            lacking = sorted(set(node["required"]) - set(node.get("properties", {})))
            yield node, None, f"`required` at {path} names {', '.join(map(repr, lacking))}, which `properties` lacks"
        else:
            yield node, key, f"`{key}` at {path}"
    for sub_path, sub in subs:
        yield from unexpressed(sub, f"{path}/{sub_path}", root)
    for name, sub in (node.get("$defs") or {}).items() if path == "#" else ():  # all at the top (prepare)
        yield from unexpressed(sub, f"#/$defs/{name}", root)


def loosened(schema: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A schema that is not strict (a tool without `strict: true`, a response format with `strict: false`, Ollama's
    `format`), as its grammar takes it: a copy without the constraints the grammar cannot enforce (`minimum`,
    `uniqueItems`, ...), which the answer is validated against afterwards, and what was left out. Raises
    SchemaError for what cannot be left out (a `false` schema, a reference out of the document)."""
    copy = json.loads(json.dumps(schema))
    left: list[str] = []
    for _ in range(4):  # leaving one keyword out can change which rule a node gets: look again
        found = list(unexpressed(copy, "#", copy))
        if not found:
            return copy, left
        for node, key, message in found:
            if key is None:
                raise SchemaError(message)
            if message:
                left.append(message)
            _leave_out(node, key)
    raise SchemaError("the schema cannot be loosened into one the grammar takes")


def _leave_out(node: dict[str, Any], key: str) -> None:
    """`loosened`'s step: `key` out of `node`, and what it leaned on with it, so the grammar never excludes a value
    the whole schema allows (the next pass looks at the node again)."""
    if key == ANY:
        node.clear()
        node.update(json.loads(json.dumps(ANY_VALUE)))
    elif key == "oneOf":
        node["anyOf"] = node.pop("oneOf")  # "exactly one" becomes "at least one"
    elif key == "allOf":
        parts = node.pop("allOf")
        # one part (pydantic v1's {"allOf": [{"$ref": ...}], "description": ...}): it is the node's schema
        if isinstance(parts, list) and len(parts) == 1 and isinstance(parts[0], dict) and \
                not (set(parts[0]) & set(node) & CONSTRAINTS):
            node.update(parts[0])
    elif key == "patternProperties":
        node.pop(key)
        if node.get("additionalProperties", True) is not True:
            node.pop("additionalProperties")  # it forbade the keys the patterns allowed
    elif key == "prefixItems":
        node.pop(key)
        node.pop("items", None)  # `items` was for the places after the prefix, not for every place
    elif key == "maxItems" and "prefixItems" in node and node.get("items") in (None, False):
        prefix = node["prefixItems"]  # a tuple: the grammar writes every place of it
        if isinstance(node[key], int) and isinstance(prefix, list) and node[key] < len(prefix):
            node["prefixItems"] = prefix[:node[key]]
        node.pop(key)
    else:
        node.pop(key, None)


__all__ = ["ANY_VALUE", "CONSTRAINTS", "MAX_REPEAT", "STRING_FORMATS", "TYPES", "loosened", "unexpressed"]
