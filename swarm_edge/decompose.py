"""Decomposition: does a request ask for several tasks, and which, in what order?

Read by rules, then routed by the trained head, with no model call on the way:

1. Quoted spans ('...', "...", “...”, «...») are material: nothing inside them is ever a boundary.
2. Pasted material is cut off: what follows a blank line, a colon and a newline, a bulleted list, or a colon
   followed by prose (not by a quote: "translate to english: '...' then tell me ..." goes on after the quote).
   Not material: a list of instructions ("1. Convert these: $25, $40\n2. Rewrite ..."), a colon after nothing
   but connectives ("Also: what is ...?"); and a paragraph after the material that opens with a connective and
   an instruction ("...\n\nSecond, summarize this comment") is instruction again.
3. The instruction is cut at every candidate boundary: sentence ends, new lines, numbered items ("1)", "2."),
   semicolons, commas, dashes, and joiners ("and then", "after that", "also", "puis", "und", "y después", ...).
4. A piece counts as an instruction only when, past fillers ("then", "also", "please", "can you", "First,"),
   it begins with an imperative verb, a question word or a request ("I need a summary"), or is a whole
   sentence that asks ("Ce message est-il formel ?"): "…and 4 pears", "…and then fall in autumn?" or
   "…, removes the falsy values" are not instructions and stay with the piece before them (a leading
   non-instruction, "Here's a customer message: '…'", goes with the piece after it; so do connectives,
   "but before that"). A lone verb before "and" is a noun in a list ("principal, rate and term") unless an
   instruction follows ("summarize and translate this").
5. Each instruction is routed by the trained head; adjacent pieces of one task merge; a piece routed with
   confidence under `min_confidence` merges into its neighbour, unless it is a question of its own ("what's a
   palindrome?", not "what's the result?"): that goes to the generalist (chat), as an unsure route does.
   A piece asked to be done first ("... - translate it first tho", "but before that, ...") moves before the
   piece it follows. Two or more groups left: a compound request.

Each subtask's instruction is its own words from the request; it works on the previous subtask's output when
it refers back to it ("the summary", "it", "that", "the result") or was asked for first, else on the pasted
material. The rules and word lists were set on the dev split of benchmarks/data/eval (compound + single); the
test split is reported by benchmarks/bench_decompose.py.
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
    r"|\s+[—–-]+\s+|\s*[—–]\s*"                      # dashes between clauses
    r"|\s+\+\s+(?=[^\W\d])"                          # "which language + translate it"
    rf"|\s*[,;]\s*(?:{_JOINER}\s+)*"                   # commas, semicolons (a piece must still begin like
    rf"|\s+(?:{_JOINER}\s+)+",                         # an instruction), joiners
    re.I)
_NUMBERING = re.compile(r"^\s*(?:\(?\d{1,2}[.)]|[-*•])\s*")

_FILLERS = re.compile(
    r"^(?:(?:and|then|also|plus|please|pls|plz|kindly|now|next|finally|lastly|afterwards|after that|first|firstly|"
    r"second|secondly|third|thirdly|additionally|as well|too|und|dann|danach|et|puis|ensuite|y|después|luego|e|poi|"
    r"just|bitte|außerdem|zum schluss|noch|s'il te plaît|aussi|enfin|por favor|también|además|"
    r"oh and|and unrelated|unrelated|btw|by the way|one more thing|quick q|quick question|ok|okay|so|"
    r"i was wondering if you could|i wonder if you could|would you mind|do you mind|if you can|if you could|"
    r"if it's not too much trouble|while you're at it|"
    r"can you|could you|would you|will you|can u|could u|i want you to|i need you to|i'd like you to|"
    r"help me|i want to|i need to|i'd like to|let's)\b[\s,:]*)+", re.I)


def _bare(piece: str) -> str:
    """The piece without its numbering ("2)", "-") and leading fillers ("then", "can you")."""
    return _FILLERS.sub("", _NUMBERING.sub("", piece))


# imperative verbs (base forms) and question openers that begin an instruction; English, German, French,
# Spanish, Italian, Portuguese. Lowercase, compared with the piece's first word.
_VERBS = set("""
add analyse analyze answer apply arrange average boil brainstorm build capitalise capitalize clean comment
compose convert debug decode delete design document draft elaborate encode enumerate expand flag highlight
localise localize look mark merge normalise normalize optimise optimize plot redact refactor remove render
rename reorder replace reply respond reverse review spellcheck suggest swap tighten tldr total validate verify
assign calculate categorise categorize change check classify compare
compute condense convert correct count create decide define describe detect determine divide draft edit
estimate evaluate explain express extract figure fill find fix format generate get give grab guess identify
implement improve label list make multiply name note outline paraphrase parse pick polish produce proofread
provide pull put rate recap rephrase restate return reword rewrite say schreibe show shorten simplify solve
sort spell split state subtract sum summarise summarize tag tally tell tidy tl;dr transcribe transform
translate turn work write
zieh rechne nimm mach sag prüfe liste korrigiere verbessere fass kürze ordne bestimme such überprüfe
übersetze übersetz fasse berechne erkläre extrahiere klassifiziere schreib formuliere nenne zähle finde gib
traduis traduisez traduire résume résumez calcule calculez écris écrivez explique expliquez classe classez
extrais extrayez reformule reformulez donne donnez compte comptez dis dites fais faites corrige corrigez
liste listez trouve trouvez indique indiquez convertis convertissez réécris vérifie
traduce tradúcelo tradúcela tradúcelos traducir resume resúmelo resumir calcula escribe explica clasifica
extrae reescribe dame cuenta dime haz corrige convierte encuentra indica enumera
traduci riassumi calcola scrivi spiega classifica estrai riscrivi dimmi
traduza resuma calcule escreva explique classifique
""".split())
_AUX = set("is are was were can could would should do does did will has have am isn't aren't don't doesn't "
           "kannst könntest kann können würdest würden".split())
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
    sure: bool = True            # routed with confidence >= min_confidence, or an unsure question (generalist's)


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


# a piece that asks a general question: unsure of its task, it is the generalist's
_GENERAL = re.compile(r"^(?:explain|describe|tell me about|what(?:'s| is| are)|c'est quoi|qu'est-ce|was ist|qué es)\b"
                      r"|^[^?]*\?$", re.I)
_NOT_A_TOPIC = set("""what what's whats which that this with from have does then there their about into would could
should will your left over much many result results answer total range average mean value outcome number end""".split())


def _general(piece: str) -> bool:
    """A question of its own ("what's a palindrome?"), not a follow-up on a calculation ("what's the result?"),
    not a calculation ("what's 8!?")."""
    rest = _bare(piece)
    words = set(re.findall(r"[^\W\d_]{4,}", _PH.sub("", rest).lower())) - _NOT_A_TOPIC
    return bool(_GENERAL.match(rest)) and bool(words) and not re.search(r"\d", _PH.sub("", rest))


# a later piece to be done before the one it follows
_BEFORE = re.compile(r"^\W*(?:but\s+)?(?:before (?:that|this|you do that|doing that)|first of all)\b"
                     r"|\bfirst(?:\s+(?:tho|though|please|pls))?\W*$|\bfirst(?:\s+(?:tho|though))?,", re.I)
_LIST_LINE = re.compile(r"^\s*(?:\(?\d{1,2}[.)]|[-*•])\s+")
_NEXT_STEP = re.compile(
    r"^(?:and|then|also|plus|second|secondly|third|thirdly|next|finally|lastly|after that|afterwards|oh and|"
    r"and unrelated|unrelated|btw|p\.?s\.?|und|dann|danach|außerdem|et|puis|ensuite|y|después|luego)\b", re.I)


def _only_fillers(segment: str) -> bool:
    """Nothing but connectives before a colon ("Also:", "and then:", "Quick q:"): not a material label."""
    return not _FILLERS.sub("", segment.strip()).strip(" ,;:—–-")


def _list_block(lines: list[str]) -> int:
    """How many leading lines form a list of instructions ("1. Convert ...", "- write ..."): 0 unless >= 2."""
    n = 0
    while n < len(lines) and _LIST_LINE.match(lines[n]) and _starts_instruction(lines[n]):
        n += 1
    return n if n >= 2 else 0


def split_material(text: str) -> tuple[str, str, list[str]]:
    """(instruction with quotes as placeholders, pasted material, the quotes).

    A list of instructions ("1. ... 2. ...", bullets) stays instruction, also after "Do these:"; a colon after
    nothing but connectives ("Also: what is ...?") is no material label; a paragraph after the material that
    opens with a connective and an instruction ("Second, give me ...", "and then list ...") is instruction too.
    """
    protected, quotes = _protect(text.strip().replace("tl;dr", "tldr").replace("TL;DR", "TLDR"))
    lines = protected.split("\n")
    head = 0 if _LIST_LINE.match(lines[0]) else 1 if lines[0].rstrip().endswith(":") else None
    listed = _list_block(lines[head:]) if head is not None else 0
    if listed:
        assert head is not None
        cut = len("\n".join(lines[:head + listed]))
        instruction = "\n".join(lines[head:head + listed]) if head else protected[:cut]
    else:
        cut = len(protected)
        if m := _MATERIAL_BREAK.search(protected):
            cut = m.start()
        for m in _COLON.finditer(protected[:cut]):
            before = re.split(r"[.?!,;\n]", protected[:m.start()])[-1]
            if not _only_fillers(before):
                cut = m.start()
                break
        instruction = protected[:cut].strip()
    material = protected[cut:].lstrip(": \t\n")
    # later paragraphs that are instructions ("...\n\nSecond, summarize this comment: '...'")
    paragraphs = re.split(r"\n\s*\n", material)
    kept, steps = [], []
    for i, para in enumerate(paragraphs):
        first = re.split(r"(?<=[.?!])\s", para.strip(), maxsplit=1)[0]
        if i > 0 and _NEXT_STEP.match(para.strip()) and (_starts_instruction(first) or first.endswith("?")):
            steps.append(para.strip())
        else:
            kept.append(para)
    if steps:
        instruction = "\n".join([instruction, *steps])
    material = _restore("\n\n".join(kept), quotes).strip()
    return instruction, material, quotes


_OPENER = re.compile(r"^(?:i need|i'd like|i would like|i want|we need|give me|gimme)\b(?!\s+to\b)", re.I)
_PRONOUN_SUFFIX = re.compile(r"-(?:moi|nous|toi|en|le|la|les|lui|y)$")


def _starts_instruction(piece: str, sentence_start: bool = False) -> bool:
    """Begins with an imperative verb, a question word, a request opener
    ("I need a summary"), an auxiliary that opens a question ("Is it ...?"), or is a whole sentence that asks
    ("Ce message est-il formel ?")."""
    text = piece.strip()
    rest = _bare(text).strip().lstrip("¿¡—–-« ").strip()
    if sentence_start and text.endswith("?") and len(rest) > 1:
        return True
    if _OPENER.match(rest):
        return True
    word = re.match(r"[\w'’;-]+", rest.lower())
    if not word:
        return False
    w = _PRONOUN_SUFFIX.sub("", word.group(0).replace("’", "'"))
    if w in _QUESTION:
        return True
    if w in _AUX:
        return rest.rstrip().endswith("?")
    return w in _VERBS


_LIST_JOINERS = {"and", "or", "&", ",", "und", "oder", "et", "ou", "y", "o", "e"}
_TASK_NOUN = re.compile(r"^(?:(?:a|an|the|my|quick|short|brief|one-line|two-line)\s+)*"
                        r"(?:summary|tldr|translation|recap|overview|list)\b", re.I)


def _lone_word(piece: str) -> bool:
    rest = _bare(piece.strip()).strip(" ,.;")
    return bool(rest) and " " not in rest


def pieces(instruction: str) -> list[tuple[int, int, bool, bool]]:
    """The instruction (placeholders in) cut at every candidate boundary:
    [(start, end, begins an instruction, begins a sentence)]. A lone verb before "and"/"or" counts only when the
    next piece is an instruction too ("summarize and translate this"), else it is a noun in a list ("principal,
    rate and term"). A piece after nothing but connectives ("And unrelated - any tips ...?") begins a sentence
    when they did. A leading task noun ("quick summary of this, then ...") is an instruction."""
    out: list[list] = []
    at, sentence = 0, True
    for m in [*_BOUNDARY.finditer(instruction), None]:
        end = m.start() if m else len(instruction)
        piece = instruction[at:end]
        if piece.strip(" ,.;"):
            begins = _starts_instruction(piece, sentence) or (not out and bool(_TASK_NOUN.match(piece.strip())))
            out.append([at, end, begins, sentence, m.group(0).strip().lower() if m else ""])
        if m:
            at = m.end()
            cut = instruction[max(0, m.start() - 1):m.end()]
            was = sentence
            sentence = bool(re.search(r"[.?!\n]", cut) or re.match(r"\s*\(?\d", m.group(0)))
            if piece.strip(" ,.;") and _only_fillers(piece) and was:
                sentence = True
    for i, p in enumerate(out):
        if p[2] and p[4] in _LIST_JOINERS and _lone_word(instruction[int(p[0]):int(p[1])]):
            p[2] = i + 1 < len(out) and out[i + 1][2]
    return [(int(p[0]), int(p[1]), bool(p[2]), bool(p[3])) for p in out]


def read(text: str, route: Callable[[str], tuple[str, float]], *, min_confidence: float = 0.5,
         max_steps: int = 4) -> Reading:
    """Read `text` (see the module docstring); `route(piece) -> (task, confidence)` is the trained head."""
    instruction, material, quotes = split_material(text)
    reading = Reading(instruction=_restore(instruction, quotes), material=material)
    # glue: a non-instruction piece belongs to the instruction before it (a leading one to the one after it)
    groups: list[list[int]] = []         # [start, end] spans in `instruction`
    lead: int | None = None
    for start, end, is_instruction, _ in pieces(instruction):
        if is_instruction:
            groups.append([start if lead is None else lead, end])
            lead = None
        elif groups and (_only_fillers(instruction[start:end]) or _BEFORE.match(instruction[start:end])):
            lead = start if lead is None else lead  # "but before that", "And unrelated": with the next piece
        elif groups:
            groups[-1][1] = end
        elif lead is None:
            lead = start
    if lead is not None and groups and lead > groups[-1][1]:
        groups[-1][1] = len(instruction.rstrip())  # connectives with nothing after them stay with the last piece
    if len(groups) < 2:
        return reading
    text_of = lambda start, end: _restore(instruction[start:end].strip(" ,;"), quotes)  # noqa: E731
    for start, end in groups:
        task, conf = route(text_of(start, end))
        sure = conf >= min_confidence
        if not sure and _general(text_of(start, end)):
            task, sure = "chat", True  # an unsure question goes to the generalist (as an unsure route does)
        reading.pieces.append(Piece(text_of(start, end), task, conf, start, end, sure))
    # an unsure piece merges into the piece before it (a leading one into the piece after it); then
    # adjacent pieces of one task are one subtask
    runs: list[Piece] = []
    for p in reading.pieces:
        if runs and (not p.sure or p.task == runs[-1].task):
            runs[-1].end = p.end
            runs[-1].confidence = max(runs[-1].confidence, p.confidence) if p.task == runs[-1].task \
                else runs[-1].confidence
        elif runs and len(runs) == 1 and not runs[0].sure:
            runs[0] = Piece("", p.task, p.confidence, runs[0].start, p.end, True)
        else:
            runs.append(Piece("", p.task, p.confidence, p.start, p.end, p.sure))
    for p in runs:
        p.text = text_of(p.start, p.end)
    moved = set()
    for i in range(1, len(runs)):  # "..., but before that ...", "... translate it first tho": done first
        if _BEFORE.search(_restore(instruction[runs[i].start:runs[i].end], quotes)):
            runs[i - 1], runs[i] = runs[i], runs[i - 1]
            moved.add(i)
    if len(runs) < 2 or len(runs) > max_steps:
        return reading
    subtasks = []
    for i, p in enumerate(runs):
        own = _bare(p.text).strip(" ,;")
        own = own[:1].upper() + own[1:]
        has_quote = any(q in p.text for q in quotes)
        uses_previous = i in moved or (i > 0 and not has_quote and bool(_BACKREF.search(_PH.sub("", own))))
        subtasks.append({"task": p.task, "instruction": own, "uses_previous": uses_previous,
                         "own_material": has_quote, "confidence": round(p.confidence, 4)})
    reading.subtasks = subtasks
    return reading
