"""The privacy gate on its own: every planted item removed, restored where its placeholder comes back, ordinary
prompts (the router and task suites) left untouched, linear time on hostile input, secrets split across
messages, invisible characters, and placeholder look-alikes typed by the user."""

import json
import time
from pathlib import Path

import pytest

from swarm_edge.redact import KINDS, Redactor, luhn_ok
from tests.planted import ITEMS

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
# seconds allowed per MiB of hostile input: about 4x the worst seen on a loaded 2-core machine (0.7-1.0 s);
# the quadratic version needed ~2 s for 40 KiB of some of these, i.e. tens of minutes per MiB
SECONDS_PER_MIB = 4.0


def ph(r: Redactor, kind: str, n: int = 1) -> str:
    return f"[{kind}_{n}_{r.tag}]"


def streamed(r: Redactor, answer: str, size: int) -> str:
    s = r.restorer()
    return "".join(s.feed(answer[i:i + size]) for i in range(0, len(answer), size)) + s.flush()


def test_there_are_at_least_100_planted_items_of_every_kind():
    assert len(ITEMS) >= 100
    assert {k for k, _, _ in ITEMS} == set(KINDS)


@pytest.mark.parametrize("kind,value,sentence", ITEMS, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(ITEMS)])
def test_each_planted_item_is_removed_and_restored(kind, value, sentence):
    r = Redactor()
    out = r.redact(sentence)
    assert value not in out
    assert ph(r, kind) in out, out
    assert r.summary() == {kind: 1}
    assert r.restore(out) == sentence


def test_all_items_in_one_text_and_repeated_values_share_a_placeholder():
    text = "\n".join(s for _, _, s in ITEMS) + "\nagain: " + ITEMS[0][1]
    r = Redactor()
    out = r.redact(text)
    for _, value, _ in ITEMS:
        assert value not in out
    assert r.restore(out) == text
    assert out.count(ph(r, "OPENAI_KEY")) == 2
    assert sum(r.summary().values()) == len(ITEMS) + 1


def ordinary_prompts() -> list[str]:
    prompts = []
    for f in ["tests/data/route_dev.jsonl", "tests/data/route_heldout.jsonl", "benchmarks/data/task_suite.jsonl",
              "benchmarks/data/compound.jsonl"]:
        prompts += [json.loads(line)["prompt"] for line in (ROOT / f).read_text().splitlines() if line.strip()]
    return prompts + [
        "Sort these numbers: 12 45 678 9012 33", "ping 192.168.100.200", "Order 1234567890123 shipped",
        "It costs 1,299,000 dollars", "Meet on 2026-11-28 at 10:30", "version 3.11.7.2024",
        # near misses of the newer patterns
        "What is the difference between authentication and authorization?",
        "Authorization: who may do what. Explain it simply.",
        "Set the header Authorization: Bearer <token> and retry; the Bearer token comes from /login.",
        "x-api-key header: what is it for?", "AccountKey=<your key> goes in the connection string",
        "secret_access_key: the AWS secret, 40 characters", "Explain what -----BEGIN RSA PRIVATE KEY----- means",
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2pm\n-----END CERTIFICATE-----",
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBGP1xyz\n-----END PGP PUBLIC KEY BLOCK-----",
        "Plan the risk-assessment-framework-for-2024-projects and the task-management-system-v2 rollout",
        "The JWT header eyJhbGciOiJIUzI1NiJ9 decodes to JSON", "Scores: 10 20 30 40 50 60 70.",
        "ISBN 978-3-16-148410-0 and page 12.", "Post to hooks.slack.com/services/ with your message",
        "zero\u200bwidth\u200cjoiners\u200d in ordinary\u2060text\ufeff stay",
    ]


def test_ordinary_prompts_are_not_touched_beyond_their_email_addresses():
    prompts = ordinary_prompts()
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


def test_ordinary_prompts_as_one_conversation_gain_nothing_at_their_boundaries():
    prompts = [p for p in ordinary_prompts() if "@" not in p]
    assert Redactor().redact_all(prompts) == prompts


def test_streamed_restoration_handles_placeholders_split_across_chunks():
    r = Redactor()
    red = r.redact("mail jane.doe@example.com and bob@example.org, key sk-" + "a1" * 20)
    assert red == f"mail {ph(r, 'EMAIL')} and {ph(r, 'EMAIL', 2)}, key {ph(r, 'OPENAI_KEY')}"
    answer = (f"Sent to {ph(r, 'EMAIL')}; cc {ph(r, 'EMAIL', 2)}. Key {ph(r, 'OPENAI_KEY')} rotated. "
              f"[not a placeholder] [EMAIL_1] [EMAIL_9_{r.tag}] [X")
    for size in (1, 2, 3, 5, 7, 64):
        assert streamed(r, answer, size) == r.restore(answer)
    assert "jane.doe@example.com" in r.restore(answer)
    assert r.restore(answer).endswith(f"[not a placeholder] [EMAIL_1] [EMAIL_9_{r.tag}] [X")


def test_luhn():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    r = Redactor()
    assert r.redact("card 4111 1111 1111 1112") == "card 4111 1111 1111 1112"  # fails Luhn: not a card


# --- linear time on hostile input: (prefix, unit repeated to 1 MiB, suffix)
HOSTILE = {
    "dots": ("", "a.", ""), "at-signs": ("", "a@", ""), "dots-then-at": ("", "a.", "@x"),
    "at-then-dotted-domain": ("x@", "a.", ""), "at-then-hyphens": ("x@", "a-", ""),
    "digit-runs": ("", "1" * 25 + " ", ""), "digits-dashes": ("", "1-", ""), "digit-pairs": ("", "12 ", ""),
    "short-groups": ("", "1 11 ", ""), "dashed-pairs": ("", "12-", ""), "digits": ("", "1", ""),
    "dotted-digits": ("", "1.", ""), "country-codes": ("", "+1 ", ""), "area-codes": ("", "(12)", ""),
    "base64": ("", "A" * 63 + "/", ""), "base64-lines": ("", "A" * 64 + "\n", ""),
    "begin-repeated": ("", "-----BEGIN RSA PRIVATE KEY-----\n", ""),
    "begin-then-base64": ("-----BEGIN RSA PRIVATE KEY-----\n", "A" * 64 + "\n", ""),
    "begin-then-blanks": ("-----BEGIN RSA PRIVATE KEY-----", " ", ""),
    "end-repeated": ("", "-----END RSA PRIVATE KEY-----\n", ""), "eyJ-runs": ("", "eyJ-", ""),
    "eyJ-dots": ("", "eyJhbGciOi.", ""), "url-userinfo": ("", "://a:", ""), "url-at-signs": ("://a:", "b@", ""),
    "sk-repeated": ("", "sk-", ""), "authorization": ("", "Authorization: ", ""),
    "authorization-blanks": ("Authorization:", " ", ""), "bearer": ("", "Bearer ", ""),
    "aws-label": ("", "aws_secret_access_key ", ""), "zero-width": ("", "a\u200b", ""),
    "zero-width-at": ("", "a\u200b@", ""), "account-key": ("", "AccountKey=", ""),
    "every-needle": ("", "x@ sk- .eyJ :// authorization bearer secret session key hooks.slack.com/ -----BEGIN "
                         "-----END a.a.a.a 1-2-3 (12) +1 ", ""),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_megabyte_is_redacted_in_linear_time(name):
    prefix, unit, suffix = HOSTILE[name]
    text = prefix + (unit * (MIB // len(unit) + 1))[:MIB] + suffix
    r = Redactor()
    t0 = time.perf_counter()
    out = r.redact(text)
    took = time.perf_counter() - t0
    assert took < SECONDS_PER_MIB, f"{name}: {took:.2f} s for 1 MiB"
    assert r.restore(out) == text  # and nothing lost on the way


@pytest.mark.timeout(120)
def test_twenty_thousand_distinct_emails_are_numbered_in_linear_time():
    text = " ".join(f"user{i}@example.com" for i in range(20000))
    r = Redactor()
    t0 = time.perf_counter()
    out = r.redact(text)
    took = time.perf_counter() - t0
    assert took < 1.5, f"{took:.2f} s"
    assert r.summary() == {"EMAIL": 20000}
    assert out.endswith(ph(r, "EMAIL", 20000)) and r.restore(out) == text


def test_numbers_count_per_kind_in_text_order_and_repeat_for_the_same_value():
    r = Redactor()
    out = r.redact("a@example.com 020 7946 0958 b@example.com a@example.com")
    assert out == f"{ph(r, 'EMAIL')} {ph(r, 'PHONE')} {ph(r, 'EMAIL', 2)} {ph(r, 'EMAIL')}"
    assert r.redact("c@example.com") == ph(r, "EMAIL", 3)  # one numbering per Redactor, across calls


# --- the misses of the first version (more shapes are planted in tests/planted.py)
def test_an_unterminated_private_key_is_redacted_to_the_end_of_its_base64_body():
    body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" * 2 + "\n" + "k2VvLmbrnFINzwaWb9ymw6oQx+/4" * 2 + "\nAQAB=="
    for text, after in [(f"-----BEGIN RSA PRIVATE KEY-----\n{body}\nThanks!", "\nThanks!"),
                        (f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n\nwhy is it short", "\n\nwhy is it short"),
                        (f"key: '-----BEGIN PRIVATE KEY-----\\n{body}'".replace("\n", "\\n"), "'")]:
        r = Redactor()
        out = r.redact(text)
        assert out.endswith(ph(r, "PRIVATE_KEY") + after), out
        assert "MIIE" not in out and "AQAB" not in out and r.restore(out) == text


def test_phones_at_the_end_of_a_sentence_and_url_passwords_with_at_signs_or_no_user():
    r = Redactor()
    text = "Call 415-555-0123. Or +1 415 555 0134. Cache: redis://:s3cret@cache:6379 db: postgres://u:p@ss@db/x"
    out = r.redact(text)
    assert out == (f"Call {ph(r, 'PHONE')}. Or {ph(r, 'PHONE', 2)}. Cache: redis://:{ph(r, 'URL_PASSWORD')}"
                   f"@cache:6379 db: postgres://u:{ph(r, 'URL_PASSWORD', 2)}@db/x")
    assert r.restore(out) == text


def test_authorization_header_values_of_any_shape():
    for value in ["Bot 123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw", "token 4f1b2c3d", "Bearer abc|def~1",
                  "Basic YWxhZGRpbjpvcGVuc2VzYW1l"]:
        r = Redactor()
        text = f'curl -H "Proxy-Authorization: {value}" https://example.com'
        scheme = value.split()[0]
        assert r.redact(text) == f'curl -H "Proxy-Authorization: {scheme} {ph(r, "AUTH_HEADER")}" https://example.com'


def test_invisible_characters_are_seen_through_but_never_dropped():
    r = Redactor()
    key = "sk-proj-" + "Ab3d" * 6 + "\u200b" + "Xy9z" * 6
    text = f"\ufeffmy\u200b key:\u2060{key}\u200d. bye\u200c"
    out = r.redact(text)
    assert out == f"\ufeffmy\u200b key:\u2060{ph(r, 'OPENAI_KEY')}\u200d. bye\u200c"  # the ones outside stay put
    assert r.restore(out) == text  # the one inside comes back with the key


def test_typed_placeholder_lookalikes_come_back_as_typed():
    r = Redactor()
    text = "My template says [EMAIL_1] and [EMAIL_2] [PHONE_1_abcdef]; the real one is jane@example.com"
    out = r.redact(text)
    assert out == f"My template says [EMAIL_1] and [EMAIL_2] [PHONE_1_abcdef]; the real one is {ph(r, 'EMAIL')}"
    answer = out + f" (reply to {ph(r, 'EMAIL')}, not [EMAIL_1])"
    want = text + " (reply to jane@example.com, not [EMAIL_1])"
    assert r.restore(answer) == want
    for size in (1, 4, 9):
        assert streamed(r, answer, size) == want
    assert Redactor().tag != r.tag  # unguessable per Redactor (6 random characters: 1 in 10^9 to collide)


def _split_cases() -> list[tuple[str, str, str, list[str]]]:
    key = "sk-proj-" + "Q7wE" * 12
    pem = ("-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(["b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ"] * 4)
           + "\n-----END OPENSSH PRIVATE KEY-----")
    return [
        ("key", "my key is " + key[:14], key[14:] + " - does it work?", [key[8:14], key[14:]]),
        ("short-first-half", "my key is sk-pr", key[5:] + " - does it work?", ["sk-pr", key[5:]]),
        ("email", "write to jane.doe@exa", "mple.com today", ["jane.doe@exa", "mple.com"]),
        ("private-key", "here:\n" + pem[:90], pem[90:] + "\nthanks", ["b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ"]),
        ("label-then-value", "[default]\naws_secret_access_key =", " " + "wJalrXUtnFEMIK7MDENGbPxRfiCYzEXAMPLEKEY1"
         + "\nregion = eu-west-1", ["wJalrXUtnFEMIK7MDENGbPxRfiCYzEXAMPLEKEY1"]),
    ]


def test_split_cases_that_are_not_splits():
    r = Redactor()
    out = r.redact_all(["contact ops@example.com", "Please keep this short", "Call 020 7946 0958", "Thanks"])
    assert out == [f"contact {ph(r, 'EMAIL')}", "Please keep this short", f"Call {ph(r, 'PHONE')}", "Thanks"]
    assert r.summary() == {"EMAIL": 1, "PHONE": 1}


@pytest.mark.parametrize("name,first,second,parts", _split_cases(), ids=[c[0] for c in _split_cases()])
def test_a_secret_split_across_two_messages_is_removed_from_both(name, first, second, parts):
    r = Redactor()
    a, b = r.redact_all([first, second])
    for part in parts:
        assert part not in a and part not in b, (a, b)
    assert r.restore(a) == first and r.restore(b) == second
    assert r.restore(a + b) == first + second
