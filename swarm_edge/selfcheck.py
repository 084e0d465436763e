"""Checks a cascade runs on a cheap model's answer before keeping it: cheap, model-free signs that it is wrong.

Mean token log-prob alone let confident wrong answers through. Each check looks at the request and the answer
only, and names what is wrong (or nothing):

extract    every extracted value must occur in the request's text (a model that invents or rewrites a value
           is wrong); values are the answer's lines or comma-separated items, without bullets, quotes and labels
classify   when the request offers labels ("positive or negative", "options: a, b, c"), the answer names exactly one
translate  when the request names a target language, the answer is written in it (a stop-word language id over
           English, German, French, Spanish, Italian, Portuguese and Dutch; silent when the evidence is thin)
rewrite    a rewrite that keeps the wording (voice, tense, spelling, grammar, punctuation) keeps at least half of
           the text's content words; paraphrases and changes of tone are not checked

swarm-edge tune (swarm_edge/tune/) measures each check's precision and recall on dev (how often a flagged answer was
wrong, how many wrong answers were flagged).
"""

from __future__ import annotations

import re
import unicodedata

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)

STOPWORDS = {
    "en": "the and is are was were of to in that it for you with on this be have not at by from they we an or "
          "but what all can will my your there their has had been would which".split(),
    "de": "der die das und ist nicht ein eine ich sie es zu den mit sich des auf für im dem von wir ihr sind war "
          "auch noch wie bei aus nach wird habe kann".split(),
    "fr": "le la les et est un une des je il elle pas que qui en du dans pour ce sur au avec nous vous ils sont "
          "mais sa son plus très été".split(),
    "es": "el la los las y es un una de que en no por con para se lo su al del como más pero muy está son "
          "estoy tengo hay este esta".split(),
    "it": "il lo la gli le e è un una di che non per con del della sono come ma anche questo questa ho".split(),
    "pt": "o a os as e é um uma de que não em para com do da no na se por mais muito está são tem".split(),
    "nl": "de het een en is niet ik je dat die van in op te met zijn voor er maar ook wat geen heb".split(),
}
_STOP_SETS = {lang: set(words) for lang, words in STOPWORDS.items()}
_ALL_STOPS = set().union(*_STOP_SETS.values())
LANGUAGES = {
    "en": ("english", "englisch", "englische", "anglais", "inglés", "ingles", "inglese", "inglês", "engels"),
    "de": ("german", "deutsch", "deutsche", "allemand", "alemán", "aleman", "tedesco", "alemão", "duits"),
    "fr": ("french", "französisch", "französische", "franzosisch", "français", "francais", "francés", "frances",
           "francese",
           "francês", "frans"),
    "es": ("spanish", "spanisch", "spanische", "espagnol", "español", "espanol", "spagnolo", "espanhol", "spaans"),
    "it": ("italian", "italienisch", "italienische", "italien", "italiano"),
    "pt": ("portuguese", "portugiesisch", "portugais", "portugués", "portugues", "portoghese", "português"),
    "nl": ("dutch", "niederländisch", "néerlandais", "neerlandais", "holandés", "olandese", "nederlands"),
}
_INTO = re.compile(r"\b(?:in|into|to|auf|ins|en|al|a|in het|naar)\s+(?:the\s+)?([^\W\d_]+)", re.I)


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(text.replace("’", "'").split())


def words(text: str) -> list[str]:
    return _WORD.findall(_norm(text))


def language_of(text: str, *, min_hits: int = 3) -> str | None:
    """The language whose stop words the text uses most, if it uses at least `min_hits` and clearly more
    than any other; None when the text is too short or mixed to say."""
    ws = words(text)
    counts = {lang: sum(w in stops for w in ws) for lang, stops in _STOP_SETS.items()}
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    (best, n), (_, second) = ranked[0], ranked[1]
    if n >= min_hits and n >= 2 * second:
        return best
    return None


def target_language(request: str) -> str | None:
    """The language a request asks to translate into ("into French", "auf Spanisch", "en inglés"), if named."""
    low = _norm(request)
    for m in _INTO.finditer(low):
        name = m.group(1)
        for lang, names in LANGUAGES.items():
            if name in names:
                return lang
    return None


_OPTIONS_LIST = re.compile(r"(?:options|labels|categories|choose from|one of|pick one)\s*[:\-]?\s*([^\n.?]+)", re.I)
# "a, b or c" / "a or b": up to five single words, the last two joined by "or"
_OR_LIST = re.compile(r"((?:[\w-]+\s*,\s*){0,4}[\w-]+,?\s+or\s+(?:not\s+)?[\w-]+)", re.I)
_ARTICLES = {"a", "an", "the", "is", "it", "as", "either"}


def _labels_in(text: str) -> list[str]:
    parts = [p.strip(" '\"*()[]").lower() for p in re.split(r",|/|\bor\b|\|", text)]
    out = []
    for p in parts:
        ws = [w for w in p.split() if w not in _ARTICLES]
        if ws and len(ws) <= 3:
            out.append(" ".join(ws))
    return list(dict.fromkeys(out))


def offered_labels(request: str) -> list[str]:
    """Labels a classification request offers: an explicit list ("options: a, b, c"), else "a, b or c"
    ("urgent or not urgent": "not urgent" is a label of its own); [] when it offers none clearly."""
    m = _OPTIONS_LIST.search(request)
    if m:
        labels = _labels_in(m.group(1))
        if len(labels) >= 2:
            return labels
    first = request.split("\n")[0]
    m = _OR_LIST.search(first)
    if not m:
        return []
    labels = _labels_in(m.group(1))
    if len(labels) == 2 and labels[1] == "not":  # "X or not": the labels are X and "not X"
        labels[1] = f"not {labels[0]}"
    return labels if len(labels) >= 2 else []


def _named(label: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(label)}(?![\w-])", text, re.I) is not None


def _named_labels(labels: list[str], answer: str) -> list[str]:
    """The offered labels an answer names; "not urgent" hides the "urgent" inside it."""
    out = []
    for lb in labels:
        rest = answer
        for longer in (o for o in labels if o != lb and lb in o):  # "urgent" inside "not urgent" is not "urgent"
            rest = re.sub(rf"(?<![\w-]){re.escape(longer)}(?![\w-])", " ", rest, flags=re.I)
        if _named(lb, rest):
            out.append(lb)
    return out


_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")
_LABEL = re.compile(r"^[\w /-]{1,30}:\s+")


def extracted_values(answer: str) -> list[str]:
    """The values an extraction answer lists: lines, else comma-separated items; bullets, quotes, labels and a
    leading "and" off. JSON and code blocks, counts and sentences are not lists of values: []."""
    text = answer.strip()
    if text[:1] in "{[`" or "```" in text:
        return []
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) == 1:
        lines = [p for p in re.split(r",|;", lines[0]) if p.strip()]
    values = []
    for ln in lines:
        v = _LABEL.sub("", _BULLET.sub("", ln.strip())).strip(" \"'`*.")
        v = re.sub(r"^(?:and|und|et|y)\s+", "", v, flags=re.I)
        if not v or v.endswith(":") or len(v) > 80 or len(v.split()) > 6 or v.isdigit():
            continue  # a heading, a sentence around the values, or a count: not a value to find
        values.append(v)
    return values


def content_words(text: str) -> set[str]:
    """Words of four letters or more that are not stop words: what a faithful rewrite keeps."""
    return {w for w in words(text) if len(w) >= 4 and w not in _ALL_STOPS}


_KEEPS_WORDS = re.compile(r"\b(?:active|passive|voice|tense|spelling|spell|grammar|grammatical|typos?|punctuation|"
                         r"capitali[sz]e|proofread|correct)\b", re.I)


def problems(task: str, request: str, material: str, answer: str) -> list[str]:
    """Why a cheap model's answer to `request` (whose pasted text is `material`) should not be kept; [] if none
    of the checks objects."""
    if not answer.strip():
        return ["empty answer"]
    out = []
    if task == "extract":
        hay = _norm(material or request)
        missing = [v for v in extracted_values(answer) if _norm(v) not in hay]
        if missing:
            out.append(f"extracted value not in the text: {missing[0][:60]!r}")
    elif task == "classify":
        labels = offered_labels(request)
        if labels:
            named = _named_labels(labels, answer)
            if len(named) != 1:
                out.append(f"names {len(named)} of the offered labels {labels}")
    elif task == "translate":
        want = target_language(request)
        got = language_of(answer)
        if want and got and got != want:
            out.append(f"written in {got}, asked for {want}")
    elif task == "rewrite" and _KEEPS_WORDS.search(request):
        # only rewrites that keep the wording (voice, tense, spelling, punctuation); a paraphrase, a
        # simplification or a change of tone may rightly replace most words
        source = content_words(material or request)
        if len(source) >= 4:
            kept = len(source & content_words(answer)) / len(source)
            if kept < 0.5:
                out.append(f"keeps {kept:.0%} of the text's content words")
    return out
