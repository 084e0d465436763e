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
_WORDS = {"translate": "translate", "traduis": "translate", "summarize": "summarize", "tldr": "summarize",
          "extract": "extract",
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


@pytest.mark.parametrize("text", [
    "Write a function that computes the interest for any principal, rate and number of years.",  # "rate": a noun
    "Summarize the article below in two sentences.\n\nThe council met on Monday. Then it voted. Also, it "
    "adjourned.\n\nThe next meeting is in May.",                                  # paragraphs of prose after it
    "1) start with 120 2) take away 25% 3) divide by 3 - what do I end up with?",   # a follow-up, not a topic
])
def test_more_single_requests_are_not_split(text):
    assert read(text).subtasks == []


def test_a_list_of_instructions_keeps_its_inline_material():
    r = read("1. Calculate these prices in EUR at 0.92: $25, $40\n2. Rewrite the description below\n"
             "3. Summarize the reviews\n\nDescription: a bag.\n\nReviews: 'great'")
    assert r.tasks == ["math", "rewrite", "summarize"]
    assert r.material.startswith("Description: a bag.")


@pytest.mark.parametrize("text, tasks", [
    # a colon after connectives is no material label
    ("Rewrite this more politely: 'send it now'. Also: what is a haiku?", ["rewrite", "chat"]),
    # an unsure question goes to the generalist: FAKE router, "palindrome" is in no word list, so that piece is
    # unsure (0.3); as a question it is kept, as the generalist's step, instead of merging into its neighbour
    ("Is a palindrome a word? Then write is_palindrome(s).", ["chat", "code"]),
    ("tl;dr this thread, and also extract every date", ["summarize", "extract"]),  # tl;dr is one word
])
def test_reads_as(text, tasks):
    assert read(text).tasks == tasks


def test_an_instruction_after_the_material():
    r = read("Rewrite this so it is friendlier:\n\n'Send the file.'\n\nand then translate it into French.")
    assert r.tasks == ["rewrite", "translate"]
    assert r.material == "'Send the file.'"


def test_done_first_when_asked_first():
    r = read("extract all the amounts in this invoice - translate it into english first tho\n\nRechnung: 20 EUR")
    assert r.tasks == ["translate", "extract"]
    assert r.subtasks[1]["uses_previous"]  # the extraction works on the translation
    assert read("Write code for it - but before that, calculate 3 + 4.").tasks == ["math", "code"]


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
def test_frozen_test_split_with_the_real_router(model_files, default_router_cache):
    """benchmarks/results/decompose.md: the reading on the frozen test split (never tuned on)."""
    from swarm_edge.config import DEFAULT_CONFIG
    from swarm_edge.registry import load_registry
    from swarm_edge.router_host import Router

    registry = load_registry(DEFAULT_CONFIG)
    router = Router(registry, lambda mid: model_files[mid], threads=1, cache_dir=default_router_cache)

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
    # benchmarks/results/decompose.md measured 58/96 and 7 false splits here (dev 85/106, 0/110): short of the
    # issue's 0.90 and 0. These floors catch a regression; they are not the goal.
    assert right / len(compound) >= 0.6 and len(split) <= 7
