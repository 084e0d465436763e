"""The privacy gate: secrets and personal data are replaced by placeholders before anything leaves the device.

`Redactor.redact(text)` swaps each detected item for `[KIND_n_tag]` (the same value always gets the same
placeholder within one Redactor, so a conversation stays coherent), and `restore(text)` / `restorer()` put
the originals back into the cloud's answer where the placeholders come back. Detection is by regular
expressions (plus the Luhn check for card numbers): what they can recognise is removed, every time;
free-form secrets that look like prose ("my password is hunter2") are not recognisable this way.

Kinds, most specific first (a span an earlier kind took is never taken again by a later one):
PRIVATE_KEY (PEM and PGP blocks; without an END line, to the end of the base64 body), JWT, ANTHROPIC_KEY,
OPENAI_KEY, STRIPE_KEY, GITHUB_TOKEN, SLACK_TOKEN, SLACK_WEBHOOK, GOOGLE_KEY, HF_TOKEN, AWS_KEY (access key
ids), AWS_SECRET (the value after an aws_secret_access_key / SecretAccessKey / session-token label, plain or
JSON-quoted), AZURE_KEY (AccountKey= / SharedAccessKey= of connection strings), AUTH_HEADER (the credentials
of an Authorization or API-key header, a bare "Bearer <token>"), URL_PASSWORD (user:password@host), EMAIL,
CARD (13-19 digits that pass Luhn), PHONE (9-15 digits written as a phone number).

Policies:
- Placeholders carry a random tag per Redactor (`[EMAIL_1_k3x9q2]`): restore() replaces only those, so text
  the user typed that merely looks like a placeholder (`[EMAIL_1]`) comes back untouched.
- Invisible characters (zero-width space/joiners, word joiner, BOM, soft hyphen, bidi controls) are ignored
  while matching: a key with a U+200B inside is still found. They are never dropped from the text: outside a
  secret they stay where they were, inside one they are part of the value that restore() gives back.
- Linear time: every pattern starts at a fixed anchor or at the start of a run of its own characters, so no
  position is rescanned per start; repetitions that could split a run several ways are bounded.
- Messages: `redact_all(texts)` also scans the boundary of each pair of neighbouring texts, joined with
  nothing between (the last and first 64 KiB): what is found within 1 KiB of the boundary and neither text
  revealed alone is removed too, from both sides. So a key whose first half ends one message and whose rest
  starts the next is removed from both, and so is a value whose label ends the previous message. An address,
  card or phone number already complete on its side is not taken as glued to the next message's first word;
  a key is (a word may be lost to the cloud model there; nothing of the key is sent). `redact(text)` alone
  cannot see another message: callers with several messages use `redact_all`.
"""

from __future__ import annotations

import bisect
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate

Span = tuple[int, int]
Claim = tuple[int, int, str]  # start, end, kind (positions in the text without invisible characters)

_KEY_LABEL = r"(?:[A-Z0-9]{1,16} ){0,4}PRIVATE KEY(?: BLOCK)?"
_NL = r"(?:\r?\n|\\r\\n|\\n)"  # a line break, or its escape inside a JSON or code string
_KEY_BEGIN = re.compile(rf"-----BEGIN {_KEY_LABEL}-----")
# to the first END within 64 KiB, unless another BEGIN or END comes first
_KEY_TO_END = re.compile(rf"(?:(?!-----(?:BEGIN|END) )[\s\S]){{0,65536}}?-----END {_KEY_LABEL}-----")
_KEY_BODY = re.compile(  # no END line: armor headers, one blank line, then lines made only of base64
    rf"(?:{_NL}[ \t]*[A-Za-z][A-Za-z0-9-]{{0,40}}:[^\r\n\\]{{0,200}}){{0,16}}(?:{_NL}[ \t]*(?={_NL}))?"
    rf"(?:{_NL}[ \t]*[A-Za-z0-9+/=]+[ \t]*(?=[\r\n\\\"']|\Z)|[ \t]+[A-Za-z0-9+/=]{{16,}}(?![^\s\"'\\]))*")


def _key_blocks(text: str) -> Iterator[Span]:
    """PEM and PGP private key blocks: to their END line, or without one to the end of the base64 body."""
    pos = 0
    while m := _KEY_BEGIN.search(text, pos):
        rest = _KEY_TO_END.match(text, m.end()) or _KEY_BODY.match(text, m.end())
        assert rest is not None  # _KEY_BODY matches the empty string
        pos = rest.end()
        if pos > m.end():  # a BEGIN line alone ("what does -----BEGIN … mean?") holds no secret
            yield m.start(), pos


# whole digit groups between separators: a run of digits cannot be split several ways, so nothing blows up;
# never a piece of a longer dashed number (an ISBN, a part number). The first character is consumed before the
# lookbehinds so that the search skips to + ( and digits in C.
_PHONE = (r"[+(\d](?<![\w.].)(?<!\d-.)"
          r"(?:(?<=\+)\d{1,3}[\s.-]?(?:\(\d{2,4}\)[\s.-]?)?\d{1,15}(?:[\s.-]\d{2,15}){0,5}"  # +44 (20) 7946 0321
          r"|(?<=\()\d{2,4}\)[\s.-]?\d{1,15}(?:[\s.-]\d{2,15}){0,5}"  # (415) 555-0199
          r"|(?<=\d)\d{0,14}(?:[\s.-]\d{2,15}){1,5})(?!\w|[.-]\d)")  # 415 555 0134


_DOUBLED = str.maketrans("0123456789", "0246813579")  # each digit to the digit sum of twice it


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a digit string (what every payment card number satisfies)."""
    return sum(map(int, digits[-1::-2] + digits[-2::-2].translate(_DOUBLED))) % 10 == 0


def _card(value: str) -> bool:
    digits = value.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")


def _phone(value: str) -> bool:
    """Written as a phone number, not as a list of numbers, an IP address or a bare id."""
    # cheap answers first: adversarial text can hold a candidate every few characters
    if len(value) < 9:
        return False
    first = value[0]
    spaced = first not in "+(" and not value.replace(".", "").replace("-", "").isdigit()  # else [\d.-] only
    if spaced and first != "0":
        return False  # numbers in a list look the same: only the national form with a trunk 0 (020 7946 0958)
    digits = sum(map(str.isdigit, value))
    if not 9 <= digits <= 15:
        return False
    if first in "+(":
        return True
    if spaced:
        return digits in (10, 11)
    dots, dashes = value.count("."), value.count("-")  # single separators here: groups = separators + 1
    if dots == 3 and not dashes and _IPV4.fullmatch(value):
        return False  # an IPv4 address
    return dots + dashes >= 2  # 415-555-2671, 415.555.2671 (a bare run is an id, an amount)


def _has_digit(value: str) -> bool:
    return any(c.isdigit() for c in value)


Finder = Callable[[str, str], Iterator[Span]]  # (text, text.lower()) -> spans


def _rx(pattern: str, *needles: str, accept: Callable[[str], bool] | None = None,
        nocase: bool = False) -> tuple[tuple[str, ...], Finder]:
    """A finder from a regex: the span of group `v` if it has one, else the whole match.

    A `nocase` pattern (written in lower case) runs on the lower-cased text: several times faster than
    re.IGNORECASE, which keeps the search from skipping ahead to the pattern's first letters.
    """
    compiled = re.compile(pattern)
    folded = re.compile(pattern, re.IGNORECASE) if nocase else None  # for text whose lower case has another length
    group = "v" if "v" in compiled.groupindex else 0

    def find(text: str, low: str) -> Iterator[Span]:
        if not nocase:
            matches = compiled.finditer(text)
        else:
            matches = compiled.finditer(low) if len(low) == len(text) or folded is None else folded.finditer(text)
        for m in matches:
            s, e = m.span(group)
            if s < e and (accept is None or accept(text[s:e])):
                yield s, e
    return needles, find


def _word(*words: str) -> str:
    """Any of `words`, not glued to a word before it; the check follows the literal, so the search can skip."""
    return "(?:" + "|".join(f"{re.escape(w)}(?<![\\w-]{re.escape(w)})" for w in words) + ")"


def _glued(prefix: str) -> str:
    """`prefix` after _ - = or punctuation (mykey_sk-…, token=ghp_…) but not after a letter or digit."""
    return f"{re.escape(prefix)}(?<![A-Za-z0-9]{re.escape(prefix)})"


_SP = r"[ \t]{0,32}"  # bounded: a label followed by a megabyte of blanks is one short scan, not a long backtrack
_LABEL_SEP = rf"[\"']?{_SP}[:=]{_SP}[\"']?"  # key = value, key: value, "key": "value"
_AUTH = _word("proxy-authorization", "authorization") + _LABEL_SEP
_API_KEY_HEADER = (_word("x-api-key", "api-key", "x-goog-api-key", "x-auth-token", "x-access-token", "private-token",
                         "ocp-apim-subscription-key") + rf"[\"']?{_SP}:{_SP}[\"']?")
# (kind, [(needles, one of which must occur in the lower-cased text, finder)]), most specific first
_KINDS: list[tuple[str, list[tuple[tuple[str, ...], Finder]]]] = [
    ("PRIVATE_KEY", [(("-----begin ",), lambda text, _: _key_blocks(text))]),
    # a JWT may be glued to a word; it starts at the first eyJ of its run, taken atomically ((?=(…))\1)
    ("JWT", [_rx(r"(?<![A-Za-z0-9_-])(?=(?P<p>[A-Za-z0-9_-]*?)eyJ)(?P=p)"
                 r"(?P<v>eyJ(?=(?P<h>[A-Za-z0-9_-]{8,}))(?P=h)\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})", ".eyj")]),
    ("ANTHROPIC_KEY", [_rx(r"sk-ant-[A-Za-z0-9_-]{20,}", "sk-ant-")]),
    ("OPENAI_KEY", [_rx(r"sk-(?:(?:proj|svcacct|admin)-|(?<![A-Za-z0-9]sk-))[A-Za-z0-9_-]{20,}", "sk-")]),
    ("STRIPE_KEY", [_rx(r"(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}", "_live_", "_test_")]),
    ("GITHUB_TOKEN", [_rx(r"gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{50,}", "gh")]),
    ("SLACK_TOKEN", [_rx(r"xox[abposr]-[A-Za-z0-9-]{10,}|xapp-[A-Za-z0-9-]{10,}", "xox", "xapp-")]),
    ("SLACK_WEBHOOK", [_rx(r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<v>[A-Za-z0-9_/-]{16,})",
                           "hooks.slack.com/")]),
    ("GOOGLE_KEY", [_rx(_glued("AIza") + r"[0-9A-Za-z_-]{35}", "aiza")]),
    ("HF_TOKEN", [_rx(_glued("hf_") + r"[A-Za-z0-9]{30,}", "hf_")]),
    ("AWS_KEY", [_rx(r"(?:AKIA|ASIA|ABIA|ACCA)(?<![A-Za-z0-9]....)[0-9A-Z]{16}(?![0-9A-Za-z])",
                     "akia", "asia", "abia", "acca")]),
    ("AWS_SECRET", [
        _rx(r"(?:aws_?secret_?(?:access_?)?key|secret_?access_?key)" + _LABEL_SEP + r"(?P<v>[A-Za-z0-9/+=]{16,})",
            "secret", nocase=True),
        _rx(r"(?:aws_?)?session_?token" + _LABEL_SEP + r"(?P<v>[A-Za-z0-9/+=]{100,})", "session", nocase=True)]),
    ("AZURE_KEY", [_rx(r"(?:account|sharedaccess)key" + _LABEL_SEP + r"(?P<v>[A-Za-z0-9+/]{16,}={0,2})",
                       "accountkey", "accesskey", nocase=True)]),
    ("AUTH_HEADER", [  # the credentials, not the scheme: "Authorization: Bearer [AUTH_HEADER_1_…]"
        _rx(_AUTH + r"(?:bearer|token|bot|basic|apikey)[ \t]{1,32}(?P<v>[A-Za-z0-9._~+/-][^\s\"'`,;]*)",
            "authorization", nocase=True),
        _rx(_AUTH + r"(?P<v>[A-Za-z0-9._~+/=:-]{16,})(?![^\s\"'`,;])", "authorization", accept=_has_digit,
            nocase=True),
        _rx(_API_KEY_HEADER + r"(?P<v>[^\s\"'`,;]{8,})", "api-key", "-token", "ocp-apim", accept=_has_digit,
            nocase=True),
        _rx(_glued("Bearer") + r"[ \t]{1,32}(?P<v>[A-Za-z0-9._~+/-]{16,}=*)", "bearer", accept=_has_digit)]),
    # the password may hold @ and :, so it runs to the last @ before the host
    ("URL_PASSWORD", [_rx(r"://[^\s:/@]*:(?P<v>[^\s/]+)@[\w.-]", "://")]),
    # the local part starts at the start of its run (then skips leading punctuation): one scan per run
    ("EMAIL", [_rx(r"(?<![A-Za-z0-9._%+-])[._%+-]*(?P<v>[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+"
                   r"(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b)", "@")]),
    # the lookbehind comes after the first digit, so the search skips to digits in C
    ("CARD", [_rx(r"\d(?<![\w.-]\d)(?:[ -]?\d){12,18}(?![\w-])", accept=_card)]),
    ("PHONE", [_rx(_PHONE, accept=_phone)]),
]
KINDS = [k for k, _ in _KINDS]

# format and bidi controls that render as nothing: ignored while matching (Trojan-source style hiding)
_INVISIBLE = re.compile("[\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_BOUNDARY = 65536  # how far either side of a message boundary a split secret is looked for
_NEAR = 1024  # what is found this close to the boundary may depend on the other side
# items that end where their syntax ends: one already complete on its side is not glued to the other's words
_NATURAL_END = {"EMAIL", "CARD", "PHONE"}
_TAG_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"
_PARTIAL = re.compile(r"\[[A-Z_]*(?:\d+(?:_([a-z0-9]*))?)?")  # a placeholder cut short by a chunk boundary


def _find(text: str) -> list[Claim]:
    """Every detected item of `text`, by position; where kinds overlap, the earlier kind keeps the span."""
    low = text.lower()
    taken = bytearray(len(text))
    found: list[Claim] = []
    for kind, finders in _KINDS:
        for needles, find in finders:
            if needles and not any(n in low for n in needles):
                continue  # cheap pre-filter: the pattern cannot match without one of these
            for s, e in find(text, low):
                if taken.find(1, s, e) == -1:
                    taken[s:e] = b"\x01" * (e - s)
                    found.append((s, e, kind))
    found.sort()
    return found


class _Visible:
    """`raw` without its invisible characters (`text`), and the way back to positions in `raw`."""

    def __init__(self, raw: str) -> None:
        self.raw = raw
        parts = _INVISIBLE.split(raw)
        self.text = "".join(parts) if len(parts) > 1 else raw
        # the position in `text` before which each dropped character stood
        self._dropped_at = list(accumulate(map(len, parts[:-1])))

    def raw_span(self, s: int, e: int) -> Span:
        """The span of `raw` holding text[s:e] (invisible characters around it stay outside)."""
        at = self._dropped_at
        if not at:
            return s, e
        return s + bisect.bisect_right(at, s), e + bisect.bisect_right(at, e - 1)


def _covered(claims: list[Claim], s: int, e: int) -> bool:
    """Whether [s, e) lies inside one of `claims` (sorted, not overlapping)."""
    i = bisect.bisect_right(claims, (s, float("inf"), "")) - 1
    return i >= 0 and claims[i][1] >= e


def _take(claims: list[Claim], s: int, e: int, kind: str) -> None:
    """Add [s, e) to `claims` (sorted, not overlapping); claims it overlaps are merged into it."""
    lo = bisect.bisect_left(claims, (s, -1, ""))
    if lo and claims[lo - 1][1] > s:
        lo -= 1
    hi = lo
    while hi < len(claims) and claims[hi][0] < e:
        hi += 1
    if lo < hi:
        s, e = min(s, claims[lo][0]), max(e, claims[hi - 1][1])
    claims[lo:hi] = [(s, e, kind)]


def _boundary(a: str, b: str, claims_a: list[Claim], claims_b: list[Claim]) -> None:
    """Add to both claim lists what only the joined boundary of `a` and `b` reveals (module docstring)."""
    if not a or not b:
        return
    tail, head = a[-_BOUNDARY:], b[:_BOUNDARY]
    cut, base = len(tail), len(a) - len(tail)
    for s, e, kind in _find(tail + head):
        if s >= cut + _NEAR or e <= cut - _NEAR:
            continue  # away from the boundary: each text's own scan has seen it (the window edges may cut items)
        parts = ([(claims_a, base + s, base + min(e, cut))] if s < cut else []) + \
                ([(claims_b, max(s - cut, 0), e - cut)] if e > cut else [])
        if kind in _NATURAL_END and any(_covered(c, ps, pe) for c, ps, pe in parts):
            continue  # "…ops@example.com" + "Please …": an address, not one glued to the next word
        for c, ps, pe in parts:
            if not _covered(c, ps, pe):
                _take(c, ps, pe, kind)


class Redactor:
    """Replaces detected items with placeholders and puts them back (one instance per conversation)."""

    def __init__(self) -> None:
        self.tag = "".join(secrets.choice(_TAG_ALPHABET) for _ in range(6))
        self._by_value: dict[tuple[str, str], str] = {}
        self._by_placeholder: dict[str, str] = {}
        self._issued: Counter[str] = Counter()  # placeholders made per kind (the next number)
        self.counts: Counter[str] = Counter()
        self.longest = 0  # the longest placeholder made: how much a streamed restorer may hold back
        self._pattern = re.compile(r"\[[A-Z][A-Z_]*_\d+_" + self.tag + r"\]")

    def _placeholder(self, kind: str, value: str) -> str:
        ph = self._by_value.get((kind, value))
        if ph is None:
            self._issued[kind] += 1
            ph = f"[{kind}_{self._issued[kind]}_{self.tag}]"
            self._by_value[(kind, value)] = ph
            self._by_placeholder[ph] = value
            self.longest = max(self.longest, len(ph))
        self.counts[kind] += 1
        return ph

    def redact(self, text: str) -> str:
        """`text` with every detected item replaced by its placeholder."""
        return self.redact_all([text])[0]

    def redact_all(self, texts: Sequence[str]) -> list[str]:
        """Each text redacted, and a secret split across two neighbours removed from both (module docstring)."""
        seen = [_Visible(t) for t in texts]
        claims = [_find(v.text) for v in seen]
        for i in range(len(seen) - 1):
            _boundary(seen[i].text, seen[i + 1].text, claims[i], claims[i + 1])
        return [self._replace(v, c) for v, c in zip(seen, claims, strict=True)]

    def _replace(self, seen: _Visible, claims: list[Claim]) -> str:
        out, last = [], 0
        for s, e, kind in claims:
            rs, re_ = seen.raw_span(s, e)
            out += [seen.raw[last:rs], self._placeholder(kind, seen.raw[rs:re_])]
            last = re_
        out.append(seen.raw[last:])
        return "".join(out)

    def restore(self, text: str) -> str:
        """`text` with every placeholder this Redactor made replaced by the original value."""
        return self._pattern.sub(lambda m: self._by_placeholder.get(m.group(0), m.group(0)), text)

    def _may_become_placeholder(self, tail: str) -> bool:
        """Whether `tail` (from a "[" on) may be the start of a placeholder this Redactor made."""
        m = _PARTIAL.fullmatch(tail)
        return m is not None and len(tail) < self.longest and self.tag.startswith(m.group(1) or "")

    def restorer(self) -> _StreamRestorer:
        """A restorer for streamed text: feed() chunks, get restored text; flush() at the end."""
        return _StreamRestorer(self)

    def summary(self) -> dict[str, int]:
        """How many items of each kind were redacted (what the trace shows; never the values)."""
        return dict(sorted(self.counts.items()))


class _StreamRestorer:
    """Restores placeholders that may be split across streamed chunks: holds back a possible partial one."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.pending = ""

    def feed(self, chunk: str) -> str:
        text = self.pending + chunk
        cut = text.rfind("[")
        if cut != -1 and self.redactor._may_become_placeholder(text[cut:]):
            self.pending, text = text[cut:], text[:cut]
        else:
            self.pending = ""
        return self.redactor.restore(text)

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return self.redactor.restore(text)


__all__ = ["KINDS", "Redactor", "luhn_ok"]
