"""The cascade's self-checks (selfcheck.py): pure text logic, no model."""

from __future__ import annotations

from swarm_edge.selfcheck import extracted_values, language_of, offered_labels, problems, target_language


def test_extraction_values_must_be_in_the_text():
    text = "Contact ops@harborline.net or sales@harborline.net before 12 May."
    req = "Extract the email addresses: " + text
    assert problems("extract", req, text, "- ops@harborline.net\n- sales@harborline.net") == []
    assert problems("extract", req, text, "ops@harborline.com")  # invented domain
    assert extracted_values("Emails: a@b.c, d@e.f") == ["a@b.c", "d@e.f"]


def test_a_label_must_be_exactly_one_of_those_offered():
    req = "Is this review positive or negative? The food was cold."
    assert offered_labels(req) == ["positive", "negative"]
    assert problems("classify", req, "", "Negative.") == []
    assert problems("classify", req, "", "It is neither positive nor negative")
    assert problems("classify", req, "", "Mixed feelings")
    req2 = "language of this sentence? options: English, German, French, Spanish. \"Je voudrais un café.\""
    assert offered_labels(req2)[:4] == ["english", "german", "french", "spanish"]
    assert problems("classify", req2, "", "French") == []


def test_a_translation_must_be_in_the_language_asked_for():
    assert target_language("Translate into German: the train is late") == "de"
    assert target_language("Übersetze ins Englische: der Zug ist spät") == "en"
    assert target_language("¿cómo se dice 'good night' en francés?") == "fr"
    assert target_language("What does 'Gesundheit' mean?") is None  # no target named: the check stays silent
    assert language_of("Der Zug ist heute leider sehr spät und wir sind nicht pünktlich") == "de"
    assert language_of("ok") is None  # too little to say
    req = "Translate into German: the train is late today and we are not on time"
    assert problems("translate", req, "the train is late today and we are not on time",
                    "Der Zug ist heute spät und wir sind nicht pünktlich.") == []
    assert problems("translate", req, "the train is late today and we are not on time",
                    "The train is late today and we are not on time at all, it is what it is.")


def test_a_rewrite_keeps_the_content_words():
    text = "The quarterly report was delayed because the finance team changed the accounting software."
    req = "Rewrite in active voice: " + text
    good = "The finance team delayed the quarterly report because it changed the accounting software."
    assert problems("rewrite", req, text, good) == []
    assert problems("rewrite", req, text, "Everything is fine and nothing happened.")


def test_other_tasks_and_empty_answers():
    assert problems("chat", "hi", "", "hello!") == []
    assert problems("code", "x", "", "") == ["empty answer"]
