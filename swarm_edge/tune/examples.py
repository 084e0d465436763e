"""Labelled examples for `swarm-edge tune`: loading, checking their fields, and the fixed dev/test split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from swarm_edge.errors import ConfigError

SALT = "swarm-edge/eval-split/v1:"   # the same split as benchmarks/evalsets.py
CHECK_FIELDS = {"number": ("answer",), "contains": ("expect",), "summary": ("expect",),
                "label": ("answer", "options"), "python": ("test",)}


# ---------------------------------------------------------------- examples


def example_id(ex: dict) -> str:
    return str(ex.get("id") or "p-" + hashlib.sha256(ex["prompt"].encode()).hexdigest()[:16])


def split_of(ex: dict) -> str:
    """"dev" or "test": a fixed hash of the example's id, decided before anything is measured."""
    return "test" if hashlib.sha256((SALT + example_id(ex)).encode()).digest()[0] % 2 else "dev"


def _check_fields(ex: dict, kind: str) -> str | None:
    """What is wrong with a check's fields, or None."""
    def strings(v) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, str) and x.strip() for x in v)

    if kind == "number":
        try:
            float(ex["answer"])
        except (TypeError, ValueError):
            return f"a number check's answer must be a number, got {ex['answer']!r}"
    elif kind in ("contains", "summary"):
        if not (isinstance(ex["expect"], list) and ex["expect"] and all(strings(g) for g in ex["expect"])):
            return 'expect is a list of groups of alternatives: [["paris"], ["1889", "eighteen eighty-nine"]]'
        if kind == "summary" and ":" not in ex["prompt"]:
            return "a summary check needs the text to summarise after a colon in the prompt"
    elif kind == "label":
        if not strings(ex["options"]) or ex["answer"] not in ex["options"]:
            return "options is a list of labels and answer is one of them"
    elif kind == "python" and not (isinstance(ex["test"], str) and ex["test"].strip()):
        return "a python check's test is Python source (asserts)"
    return None


def load_examples(path: Path, tasks: list[str]) -> list[dict]:
    """Labelled examples from a JSONL file; ConfigError naming the line for anything unusable."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the examples ({exc})") from None
    out, seen = [], set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            ex = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"{where}: not JSON ({exc})") from None
        if not isinstance(ex, dict) or not isinstance(ex.get("prompt"), str) or not ex["prompt"].strip():
            raise ConfigError(f"{where}: an example is an object with a non-empty \"prompt\"")
        if ex.get("task") not in tasks:
            raise ConfigError(f"{where}: \"task\" must be one of the routes' tasks: {', '.join(tasks)}")
        kind = ex.get("check")
        if not isinstance(kind, str) or kind not in CHECK_FIELDS:
            raise ConfigError(f"{where}: \"check\" must be one of {', '.join(CHECK_FIELDS)}")
        missing = [f for f in CHECK_FIELDS[kind] if f not in ex]
        if missing:
            raise ConfigError(f"{where}: a {kind} check needs {', '.join(missing)}")
        problem = _check_fields(ex, kind)
        if problem:
            raise ConfigError(f"{where}: {problem}")
        eid = example_id(ex)
        if eid in seen:
            raise ConfigError(f"{where}: duplicate id {eid!r}")
        seen.add(eid)
        out.append(ex)
    if not out:
        raise ConfigError(f"{path}: no examples")
    return out


# ---------------------------------------------------------------- measuring
