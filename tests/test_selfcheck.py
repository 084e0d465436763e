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


def test_right_answers_the_checks_once_refused():
    """Found by a second reader: each of these right answers was flagged (and escalated)."""
    right = [
        ("classify", "Is this positive, negative or neutral? I like it.", "", "Positive"),
        ("classify", "Is this ticket about billing, technical or account? Charged twice.", "", "billing"),
        ("classify", "Is this urgent or not urgent? The server is down.", "", "Not urgent"),
        ("classify", "Is this clickbait or not: You won't believe what happened next", "", "Not clickbait"),
        ("classify", "Is this a fact or an opinion: Pizza is the best food.", "", "Opinion"),
        ("extract", "return the fields as JSON: Ann Lee, 34, Berlin", "Ann Lee, 34, Berlin",
         '{"name": "Ann Lee", "age": 34}'),
        ("extract", "Which cities: New York, Paris and Tokyo are lovely.", "New York, Paris and Tokyo are lovely.",
         "New York, Paris, and Tokyo"),
        ("extract", "How many emails are in: a@b.c d@e.f", "a@b.c d@e.f", "2"),
        ("rewrite", "Paraphrase: Because several attendees could not attend, the meeting was postponed.",
         "Because several attendees could not attend, the meeting was postponed.",
         "Since a number of people couldn't make it, we moved the meeting."),
    ]
    for task, request, material, answer in right:
        assert problems(task, request, material, answer) == [], (task, request, answer)
    assert offered_labels("Is this urgent or not? The server is down.") == ["urgent", "not urgent"]
    assert problems("classify", "Is this urgent or not? The server is down.", "", "urgent, not urgent")
