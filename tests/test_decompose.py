"""Reading compound requests (swarm_edge/decompose.py).

The rules are tested with a FAKE router (labelled below: a word table, no model), so each test shows one rule;
the real router on the evaluation sets' frozen test split is the last test (real minilm-l6 embeddings)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from swarm_edge import decompose

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import evalsets  # noqa: E402

# FAKE router: the task of a piece is looked up by the first of these words it contains; sure when found,
# unsure (0.3) otherwise. It stands in for the trained head so the rules can be checked one by one.
_WORDS = {"translate": "translate", "traduis": "translate", "summarize": "summarize", "extract": "extract",
          "add": "math", "calculate": "math", "calcule": "math", "how": "math", "classify": "classify",
          "urgent": "classify",
          "rewrite": "rewrite", "write": "code", "explain": "chat", "what": "chat", "pull": "extract"}


def fake_route(piece: str) -> tuple[str, float]:
    for word in re.findall(r"[a-z]+", piece.lower()):
        if word in _WORDS:
            return _WORDS[word], 0.99
    return "chat", 0.3


def read(text: str) -> decompose.Reading:
    return decompose.read(text, fake_route, min_confidence=0.75)


@pytest.mark.parametrize("text", [
    "translate 'summarize the report and send it to the team' into german",           # inside quotes
    "Translate into German: First, open the box. Then remove the packaging and extract the plug.",  # material
    "If I buy 3 apples and 4 pears at 50 cents each, how much do I pay in total?",     # pieces that are not asks
    "Write a function in JavaScript that takes an array, removes the falsy values and then returns the sum.",
    "Summarize the following news item. The government announced a plan and also explained it.",  # prose
    "Rewrite in the past tense: I wake up, then I make coffee, and then I read the news.",
])
def test_single_requests_are_not_split(text):
    assert read(text).subtasks == []


def test_numbered_steps_with_pasted_material():
    r = read("1) extract the prices from this receipt 2) add them up\n\nCoffee 3.20\nCroissant 2.50")
    assert r.tasks == ["extract", "math"]
    assert r.material == "Coffee 3.20\nCroissant 2.50"
    first, second = r.subtasks
    assert first["instruction"] == "Extract the prices from this receipt" and not first["uses_previous"]
    assert second["instruction"] == "Add them up" and second["uses_previous"]  # "them": the prices


def test_a_quote_then_more_instructions():
    r = read("Here's a customer message: 'Hi, my order 66120 arrived broken!' Is it urgent or routine? "
             "Then extract the order number.")
    assert r.tasks == ["classify", "extract"]
    # the leading non-instruction (the quoted message) goes with the first instruction
    assert r.subtasks[0]["instruction"].startswith("Here's a customer message: 'Hi, my order 66120")


def test_a_subtask_with_its_own_quote_does_not_take_the_material():
    r = read("Calculate 15% of 80. Then translate the sentence 'The answer is twelve' into Spanish.")
    assert r.tasks == ["math", "translate"]
    assert r.subtasks[1]["own_material"] and not r.subtasks[1]["uses_previous"]


def test_other_languages_and_joiners():
    assert read("Calcule 15 % de 240, puis traduis la phrase 'le résultat est correct' en anglais.").tasks == \
        ["math", "translate"]
    assert read("Summarize this article. After that, translate the summary into Spanish.").tasks == \
        ["summarize", "translate"]


def test_unsure_pieces_and_same_task_pieces_merge():
    # "do it carefully" is an instruction the FAKE router is unsure of: it stays with the piece before it
    r = read("Summarize this report, do it carefully, then translate the summary into French.")
    assert r.tasks == ["summarize", "translate"]
    assert r.subtasks[0]["instruction"] == "Summarize this report, do it carefully"
    # two summarize pieces in a row are one subtask: nothing to split
    assert read("Summarize this report. Summarize it in two sentences.").subtasks == []


def test_too_many_steps_are_not_a_plan():
    text = "Summarize it, then translate it, then classify it, then extract the names, then rewrite it."
    assert decompose.read(text, fake_route, max_steps=4).subtasks == []


@pytest.mark.real_model
def test_frozen_test_split_with_the_real_router(model_files, tmp_path):
    """benchmarks/results/decompose.md: the reading on the frozen test split (never tuned on)."""
    from swarm_edge.config import DEFAULT_CONFIG
    from swarm_edge.registry import load_registry
    from swarm_edge.router import Router

    registry = load_registry(DEFAULT_CONFIG)
    router = Router(registry, lambda mid: model_files[mid], threads=1, cache_dir=tmp_path)

    def route(piece):
        r = router.route(piece)
        return r.task, r.confidence

    spec = registry.router
    compound, single = evalsets.load("compound", "test"), evalsets.load("single", "test")
    right = sum(decompose.read(i["prompt"], route, min_confidence=spec.split_confidence).tasks == i["subtasks"]
                for i in compound)
    split = [i["id"] for i in single if decompose.read(i["prompt"], route,
                                                       min_confidence=spec.split_confidence).subtasks]
    print(f"\ndecomposition, frozen test split: {right}/{len(compound)} plans right, {len(split)} false splits")
    # benchmarks/results/decompose.md measured 22/34 and 1 false split here (dev: 36/38, 0/54): short of the
    # issue's 0.90 and 0. These floors catch a regression; they are not the goal.
    assert right / len(compound) >= 0.6 and len(split) <= 1
