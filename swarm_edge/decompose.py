"""Decomposition: does a request ask for several tasks, and which, in what order?

Read by rules, then routed by the trained head, with no model call on the way:

1. Quoted spans ('...', "...", “...”, «...») are material: nothing inside them is ever a boundary.
2. Pasted material is cut off: what follows a blank line, a colon and a newline, a bulleted list, or a colon
   followed by prose (not by a quote: "translate to english: '...' then tell me ..." goes on after the quote).
3. The instruction is cut at every candidate boundary: sentence ends, new lines, numbered items ("1)", "2."),
   semicolons, commas, and joiners ("and then", "after that", "also", "puis", "und", "y después", ...).
4. A piece counts as an instruction only when, past fillers ("then", "also", "please", "can you", "First,"),
   it begins with an imperative verb or a question word: "…and 4 pears", "…and then fall in autumn?" or
   "…, removes the falsy values" are not instructions and stay with the piece before them (a leading
   non-instruction, "Here's a customer message: '…'", goes with the piece after it).
5. Each instruction is routed by the trained head; adjacent pieces of one task merge; a piece routed with
   confidence under `min_confidence` merges into its neighbour. Two or more groups left: a compound request.

Each subtask's instruction is its own words from the request; it works on the previous subtask's output when
it refers back to it ("the summary", "it", "that", "the result"), else on the pasted material.
The thresholds and word lists were set on the dev split of benchmarks/data/eval (compound + single); the test
split is reported by benchmarks/bench_decompose.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

_QUOTE_PAIRS = {"'": "'", '"': '"', "“": "”", "‘": "’", "«": "»", "„": "“"}
# an opening quote stands after the start, a space or an opening bracket/colon; its closing one before the end,
# a space or punctuation (so "it's" and "D'abord" are not quotes)
_QUOTE = re.compile(r"""(?:^|(?<=[\s(\[:]))(['"“‘«„])(.+?)(?:['"”’»“])(?=$|[\s.,;:!?)\]])""", re.S)
_PLACEHOLDER = "\x00{}\x00"
_PH = re.compile(r"\x00(\d+)\x00")

# where pasted material starts: a blank line, a colon + newline, a bulleted list, or a colon + prose
_MATERIAL_BREAK = re.compile(r"\n\s*\n|:[ \t]*\n|\n\s*[-*•]\s")
_COLON = re.compile(r"\s?:\s+(?!\x00)")

_JOINER = r"(?:and|und|et|y|e|plus|then|puis|dann|luego|después|poi|ensuite|danach|also|after that|afterwards)"
_BOUNDARY = re.compile(
    r"(?<=[.?!])\s+"                                   # a sentence ends
    r"|(?<=\x00)\s+(?=[A-ZÀ-Ý¿¡])"                      # a quote, then a new sentence
    r"|\s*\n\s*"                                       # a new line
    r"|(?:^|(?<=[.?!:;]))\s*\(?\d{1,2}[.)]\s+"          # numbered items: 1. 2) (3)
    r"|\s+\(?\d{1,2}\)\s+"
    rf"|\s*[,;]\s*(?:{_JOINER}\s+)*"                   # commas, semicolons (a piece must still begin like
    rf"|\s+(?:{_JOINER}\s+)+",                         # an instruction), joiners
    re.I)
_NUMBERING = re.compile(r"^\s*(?:\(?\d{1,2}[.)]|[-*•])\s*")

_FILLERS = re.compile(
    r"^(?:(?:and|then|also|plus|please|pls|plz|kindly|now|next|finally|lastly|afterwards|after that|first|firstly|"
    r"second|secondly|third|thirdly|additionally|as well|too|und|dann|danach|et|puis|ensuite|y|después|luego|e|poi|"
    r"bitte|s'il te plaît|por favor|"
    r"can you|could you|would you|will you|can u|could u|i want you to|i need you to|i'd like you to|"
    r"help me|i want to|i need to|i'd like to|let's)\b[\s,:]*)+", re.I)

# imperative verbs (base forms) and question openers that begin an instruction; English, German, French,
# Spanish, Italian, Portuguese. Lowercase, compared with the piece's first word.
_VERBS = set("""
add analyse analyze answer apply arrange assign calculate categorise categorize change check classify compare
compute condense convert correct count create decide define describe detect determine divide draft edit
estimate evaluate explain express extract figure fill find fix format generate get give grab guess identify
implement improve label list make multiply name note outline paraphrase parse pick polish produce proofread
provide pull put rate recap rephrase restate return reword rewrite say schreibe show shorten simplify solve
sort spell split state subtract sum summarise summarize tag tally tell tidy tl;dr transcribe transform
translate turn work write
übersetze übersetz fasse berechne erkläre extrahiere klassifiziere schreib formuliere nenne zähle finde gib
traduis traduisez traduire résume résumez calcule calculez écris écrivez explique expliquez classe classez
extrais extrayez reformule reformulez donne donnez compte comptez
traduce tradúcelo tradúcela tradúcelos traducir resume resúmelo resumir calcula escribe explica clasifica
extrae reescribe dame cuenta
traduci riassumi calcola scrivi spiega classifica estrai riscrivi dimmi
traduza resuma calcule escreva explique classifique
""".split())
_AUX = set("is are was were can could would should do does did will has have am isn't aren't don't doesn't".split())
_QUESTION = set("""
what what's whats which who who's whom whose when where why how how's wie was welche welcher wer warum wo wann
quel quelle quels quelles qui quoi
comment pourquoi combien est-ce qué cuál cuánto cuántos cuántas cómo quién dónde por qué cosa quale quanto
quanti come perché
""".split())

# a later subtask refers back to an earlier one's output (it, that, the summary, ...)
_BACKREF = re.compile(
    r"\b(?:it|its|it's|them|that|those|these|this|they|the (?:summary|summaries|result|results|answer|answers|"
    r"translation|translated|output|list|corrected|simplified|rewritten|shortened|new|above|same|explanation|"
    r"extracted|names|values|numbers|dates|items|sentence|version|text|message)|your (?:answer|explanation|summary|"
    r"translation|list)|the english version|ihn|sie|es|le|la|les|lo|los|las)\b|\w+(?:lo|la|los|las)\b", re.I)


@dataclass
class Piece:
    text: str                    # the piece's words, quotes restored
    task: str | None = None
    confidence: float = 0.0
    start: int = 0               # its span in the instruction (quotes as placeholders)
    end: int = 0


@dataclass
class Reading:
    """How the request was read: the instruction, the material, the pieces and the subtasks (empty: single)."""

    instruction: str
    material: str
    pieces: list[Piece] = field(default_factory=list)
    subtasks: list[dict] = field(default_factory=list)

    @property
    def tasks(self) -> list[str]:
        return [s["task"] for s in self.subtasks]


def _protect(text: str) -> tuple[str, list[str]]:
    quotes: list[str] = []

    def keep(m: re.Match) -> str:
        quotes.append(m.group(0))
        return _PLACEHOLDER.format(len(quotes) - 1)

    return _QUOTE.sub(keep, text), quotes


def _restore(text: str, quotes: list[str]) -> str:
    return _PH.sub(lambda m: quotes[int(m.group(1))], text)


def split_material(text: str) -> tuple[str, str, list[str]]:
    """(instruction with quotes as placeholders, pasted material, the quotes)."""
    protected, quotes = _protect(text.strip())
    cut = len(protected)
    if m := _MATERIAL_BREAK.search(protected):
        cut = m.start()
    if m := _COLON.search(protected[:cut]):
        cut = m.start()
    instruction = protected[:cut].strip()
    material = _restore(protected[cut:], quotes).lstrip(": \t\n").strip()
    return instruction, material, quotes


def _starts_instruction(piece: str) -> bool:
    """Begins with an imperative verb, a question word, or an auxiliary that opens a question ("Is it ...?")."""
    rest = _FILLERS.sub("", _NUMBERING.sub("", piece.strip())).strip()
    word = re.match(r"[\w'’;-]+", rest.lower())
    if not word:
        return False
    w = word.group(0).replace("’", "'")
    if w in _AUX:
        return rest.rstrip().endswith("?")
    return w in _VERBS or w in _QUESTION


def pieces(instruction: str) -> list[tuple[int, int, bool]]:
    """The instruction (placeholders in) cut at every candidate boundary: [(start, end, begins an instruction)]."""
    out, at = [], 0
    for m in [*_BOUNDARY.finditer(instruction), None]:
        end = m.start() if m else len(instruction)
        if instruction[at:end].strip(" ,.;"):
            out.append((at, end, _starts_instruction(instruction[at:end])))
        if m:
            at = m.end()
    return out


def read(text: str, route: Callable[[str], tuple[str, float]], *, min_confidence: float = 0.5,
         max_steps: int = 4) -> Reading:
    """Read `text` (see the module docstring); `route(piece) -> (task, confidence)` is the trained head."""
    instruction, material, quotes = split_material(text)
    reading = Reading(instruction=_restore(instruction, quotes), material=material)
    # glue: a non-instruction piece belongs to the instruction before it (a leading one to the one after it)
    groups: list[list[int]] = []         # [start, end] spans in `instruction`
    lead: int | None = None
    for start, end, is_instruction in pieces(instruction):
        if is_instruction:
            groups.append([start if lead is None else lead, end])
            lead = None
        elif groups:
            groups[-1][1] = end
        elif lead is None:
            lead = start
    if len(groups) < 2:
        return reading
    text_of = lambda start, end: _restore(instruction[start:end].strip(" ,;"), quotes)  # noqa: E731
    for start, end in groups:
        task, conf = route(text_of(start, end))
        reading.pieces.append(Piece(text_of(start, end), task, conf, start, end))
    # an unsure piece merges into the piece before it (a leading one into the piece after it); then
    # adjacent pieces of one task are one subtask
    runs: list[Piece] = []
    for p in reading.pieces:
        if runs and (p.confidence < min_confidence or p.task == runs[-1].task):
            runs[-1].end = p.end
            runs[-1].confidence = max(runs[-1].confidence, p.confidence) if p.task == runs[-1].task \
                else runs[-1].confidence
        elif runs and len(runs) == 1 and runs[0].confidence < min_confidence:
            runs[0] = Piece("", p.task, p.confidence, runs[0].start, p.end)
        else:
            runs.append(Piece("", p.task, p.confidence, p.start, p.end))
    for p in runs:
        p.text = text_of(p.start, p.end)
    if len(runs) < 2 or len(runs) > max_steps:
        return reading
    subtasks = []
    for i, p in enumerate(runs):
        own = _FILLERS.sub("", _NUMBERING.sub("", p.text)).strip(" ,;")
        own = own[:1].upper() + own[1:]
        has_quote = any(q in p.text for q in quotes)
        uses_previous = i > 0 and not has_quote and bool(_BACKREF.search(_PH.sub("", own)))
        subtasks.append({"task": p.task, "instruction": own, "uses_previous": uses_previous,
                         "own_material": has_quote, "confidence": round(p.confidence, 4)})
    reading.subtasks = subtasks
    return reading
