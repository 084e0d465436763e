"""Checks that decide whether an answer is right, for evaluation sets and `swarm-edge tune` examples:

number    the last number in the answer equals `answer` (commas and a trailing ".0" ignored)
contains  every group in `expect` has one of its alternatives in the answer (case-insensitive)
summary   as contains, and the answer is shorter than the text it summarises
label     `answer` occurs as a word and no other of `options` does (so "informal" is not "formal")
python    the first code block (or the whole answer) defines what `test` calls and the asserts pass, run
          sandboxed (swarm_edge/sandbox.py: no network, CPU, memory and file limits, 10 s)
"""

from __future__ import annotations

import re

from swarm_edge.sandbox import run_untrusted

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_FENCE = re.compile(r"```(?:[a-zA-Z0-9_+-]*)\n(.*?)```", re.S)


def last_number(text: str) -> float | None:
    """The last number written in `text`, or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def has_all(text: str, groups: list[list[str]]) -> bool:
    """Every group has at least one alternative in `text` (case-insensitive)."""
    low = text.lower()
    return all(any(alt.lower() in low for alt in group) for group in groups)


def label_of(text: str, options: list[str]) -> str | None:
    """The one option named in `text` as a whole word, or None (no option, or more than one)."""
    named = {o for o in options if re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text, re.I)}
    return named.pop() if len(named) == 1 else None


def code_of(text: str) -> str:
    """The first fenced code block of an answer, else the answer itself."""
    m = _FENCE.search(text)
    return m.group(1) if m else text


def run_python(code: str, test: str, timeout: float = 10.0) -> tuple[bool, str]:
    """Run `code` then `test` sandboxed (sandbox.py: no network, CPU/memory/file limits); (passed, why not)."""
    return run_untrusted(code + "\n\n" + test, timeout)


def check(item: dict, answer: str) -> tuple[bool, str]:
    """(right, note) for one suite item's answer."""
    kind = item["check"]
    if kind == "number":
        got = last_number(answer)
        return (got is not None and abs(got - float(item["answer"])) < 1e-6), f"last number {got}"
    if kind == "contains":
        return has_all(answer, item["expect"]), ""
    if kind == "summary":
        text = item["prompt"].split(":", 1)[1]
        return has_all(answer, item["expect"]) and len(answer.strip()) < len(text.strip()), f"{len(answer)} chars"
    if kind == "label":
        got = label_of(answer, item["options"])  # type: ignore[assignment]
        return got == item["answer"], f"label {got}"
    if kind == "python":
        return run_python(code_of(answer), item["test"])
    raise ValueError(f"unknown check {kind!r}")
