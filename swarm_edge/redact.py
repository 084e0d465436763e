"""The privacy gate: secrets and personal data are replaced by placeholders before anything leaves the device.

`Redactor.redact(text)` swaps each detected item for `[KIND_n]` (the same value always gets the same
placeholder within one Redactor, so a conversation stays coherent), and `restore(text)` / `restorer()` put
the originals back into the cloud's answer where the placeholders come back. Detection is by regular
expressions (plus the Luhn check for card numbers): what they can recognise is removed, every time;
free-form secrets that look like prose ("my password is hunter2") are not recognisable this way.

Kinds, most specific first (an earlier kind's match is never re-matched by a later one):
PRIVATE_KEY (PEM blocks), JWT, ANTHROPIC_KEY, OPENAI_KEY, STRIPE_KEY, GITHUB_TOKEN, SLACK_TOKEN, GOOGLE_KEY,
HF_TOKEN, AWS_KEY (access key ids), AWS_SECRET (40-char secrets after an aws_secret… label), URL_PASSWORD
(the password of user:password@host), EMAIL, CARD (13-19 digits that pass Luhn), PHONE (9-15 digits written
as a phone number).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("PRIVATE_KEY", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]+?"
                               r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----")),
    ("JWT", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    ("ANTHROPIC_KEY", re.compile(r"\bsk-ant-[A-Za-z0-9_-]{20,}")),
    ("OPENAI_KEY", re.compile(r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}")),
    ("STRIPE_KEY", re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}")),
    ("GITHUB_TOKEN", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{50,})")),
    ("SLACK_TOKEN", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("GOOGLE_KEY", re.compile(r"\bAIza[0-9A-Za-z_-]{35}")),
    ("HF_TOKEN", re.compile(r"\bhf_[A-Za-z0-9]{30,}")),
    ("AWS_KEY", re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b")),
    ("AWS_SECRET", re.compile(r"(?i)(?<=aws_secret_access_key)(?:\s*[:=]\s*[\"']?)([A-Za-z0-9/+=]{40})")),
    ("URL_PASSWORD", re.compile(r"(?<=://)[^\s:/@]+:([^\s@/]+)(?=@[\w.-])")),
    ("EMAIL", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")),
    ("CARD", re.compile(r"(?<![\w.-])\d(?:[ -]?\d){12,18}(?![\w-])")),
    ("PHONE", re.compile(r"(?<![\w.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?"
                         r"\d{1,4}(?:[\s.-]?\d{2,4}){1,5}(?![\w.])")),
]
KINDS = [k for k, _ in _PATTERNS]
_PLACEHOLDER = re.compile(r"\[([A-Z_]+)_(\d+)\]")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a digit string (what every payment card number satisfies)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _accept(kind: str, value: str) -> bool:
    digits = re.sub(r"\D", "", value)
    if kind == "CARD":
        return 13 <= len(digits) <= 19 and luhn_ok(digits)
    if kind == "PHONE":
        return 9 <= len(digits) <= 15 and _phone_shaped(value)
    return True


def _phone_shaped(value: str) -> bool:
    """Written as a phone number, not as a list of numbers, an IP address or a bare id."""
    if value.startswith(("+", "(")):
        return True
    if re.fullmatch(r"\d{1,3}(?:\.\d{1,3}){3}", value):
        return False  # an IPv4 address
    groups = re.split(r"[\s.-]+", value)
    if len(groups) < 2:
        return False  # a bare run of digits: an id, an amount
    if re.search(r"[.-]", value) and not re.search(r"\s", value):
        return len(groups) >= 3  # 415-555-2671, 415.555.2671
    # spaces only: numbers in a list look the same, so only the national form with a trunk 0 (020 7946 0958)
    return value.startswith("0") and len(re.sub(r"\D", "", value)) in (10, 11)


class Redactor:
    """Replaces detected items with placeholders and puts them back (one instance per conversation)."""

    def __init__(self) -> None:
        self._by_value: dict[tuple[str, str], str] = {}
        self._by_placeholder: dict[str, str] = {}
        self.counts: Counter[str] = Counter()

    def _placeholder(self, kind: str, value: str) -> str:
        key = (kind, value)
        if key not in self._by_value:
            n = sum(1 for k, _ in self._by_value if k == kind) + 1
            ph = f"[{kind}_{n}]"
            self._by_value[key] = ph
            self._by_placeholder[ph] = value
        self.counts[kind] += 1
        return self._by_value[key]

    def redact(self, text: str) -> str:
        """`text` with every detected item replaced by its placeholder."""
        for kind, pattern in _PATTERNS:
            text = pattern.sub(self._replacer(kind), text)
        return text

    def _replacer(self, kind: str) -> Callable[[re.Match[str]], str]:
        def sub(m: re.Match[str]) -> str:
            whole = m.group(0)
            if _PLACEHOLDER.fullmatch(whole) or not _accept(kind, whole):
                return whole
            if m.re.groups:  # the secret is a group inside the match (the password of a URL, a labelled value)
                start, end = m.span(1)
                base = m.start(0)
                secret = m.group(1)
                return whole[:start - base] + self._placeholder(kind, secret) + whole[end - base:]
            return self._placeholder(kind, whole)
        return sub

    def restore(self, text: str) -> str:
        """`text` with every placeholder this Redactor made replaced by the original value."""
        return _PLACEHOLDER.sub(lambda m: self._by_placeholder.get(m.group(0), m.group(0)), text)

    def restorer(self) -> _StreamRestorer:
        """A restorer for streamed text: feed() chunks, get restored text; flush() at the end."""
        return _StreamRestorer(self)

    def summary(self) -> dict[str, int]:
        """How many items of each kind were redacted (what the trace shows; never the values)."""
        return dict(sorted(self.counts.items()))


class _StreamRestorer:
    """Restores placeholders that may be split across streamed chunks: holds back a possible partial one."""

    MAX = 32  # longest placeholder we make, with room

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.pending = ""

    def feed(self, chunk: str) -> str:
        text = self.pending + chunk
        cut = text.rfind("[")
        if cut != -1 and "]" not in text[cut:] and len(text) - cut < self.MAX \
                and re.fullmatch(r"\[[A-Z_0-9]*", text[cut:]):
            self.pending, text = text[cut:], text[:cut]
        else:
            self.pending = ""
        return self.redactor.restore(text)

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return self.redactor.restore(text)


__all__ = ["KINDS", "Redactor", "luhn_ok"]
