"""The privacy gate on its own: every planted item removed, restored where its placeholder comes back, and
ordinary prompts (the router and task suites) left untouched."""

import json
from pathlib import Path

import pytest

from swarm_edge.redact import KINDS, Redactor, luhn_ok
from tests.planted import ITEMS

ROOT = Path(__file__).resolve().parents[1]


def test_there_are_at_least_100_planted_items_of_every_kind():
    assert len(ITEMS) >= 100
    assert {k for k, _, _ in ITEMS} == set(KINDS)


@pytest.mark.parametrize("kind,value,sentence", ITEMS, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(ITEMS)])
def test_each_planted_item_is_removed_and_restored(kind, value, sentence):
    r = Redactor()
    out = r.redact(sentence)
    assert value not in out
    assert f"[{kind}_1]" in out, out
    assert r.summary() == {kind: 1}
    assert r.restore(out) == sentence


def test_all_items_in_one_text_and_repeated_values_share_a_placeholder():
    text = "\n".join(s for _, _, s in ITEMS) + "\nagain: " + ITEMS[0][1]
    r = Redactor()
    out = r.redact(text)
    for _, value, _ in ITEMS:
        assert value not in out
    assert r.restore(out) == text
    assert out.count("[OPENAI_KEY_1]") == 2
    assert sum(r.summary().values()) == len(ITEMS) + 1


def test_ordinary_prompts_are_not_touched_beyond_their_email_addresses():
    prompts = []
    for f in ["tests/data/route_dev.jsonl", "tests/data/route_heldout.jsonl", "benchmarks/data/task_suite.jsonl",
              "benchmarks/data/compound.jsonl"]:
        prompts += [json.loads(line)["prompt"] for line in (ROOT / f).read_text().splitlines() if line.strip()]
    prompts += ["Sort these numbers: 12 45 678 9012 33", "ping 192.168.100.200", "Order 1234567890123 shipped",
                "It costs 1,299,000 dollars", "Meet on 2026-11-28 at 10:30", "version 3.11.7.2024"]
    assert len(prompts) > 300
    with_emails = 0
    for p in prompts:
        r = Redactor()
        out = r.redact(p)
        if "@" in p:  # the extract examples carry (made-up) addresses: those, and only those, go
            with_emails += 1
            assert set(r.summary()) == {"EMAIL"} and "@" not in out and r.restore(out) == p, out
        else:
            assert out == p, (p, r.summary())
    assert 0 < with_emails < 10


def test_streamed_restoration_handles_placeholders_split_across_chunks():
    r = Redactor()
    red = r.redact("mail jane.doe@example.com and bob@example.org, key sk-" + "a" * 40)
    assert red == "mail [EMAIL_1] and [EMAIL_2], key [OPENAI_KEY_1]"
    answer = "Sent to [EMAIL_1]; cc [EMAIL_2]. Key [OPENAI_KEY_1] rotated. [not a placeholder] [X"
    for size in (1, 2, 3, 5, 7):
        s = r.restorer()
        got = "".join(s.feed(answer[i:i + size]) for i in range(0, len(answer), size)) + s.flush()
        assert got == r.restore(answer)
    assert "jane.doe@example.com" in r.restore(answer)


def test_luhn():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    r = Redactor()
    assert r.redact("card 4111 1111 1111 1112") == "card 4111 1111 1111 1112"  # fails Luhn: not a card
