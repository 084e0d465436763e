"""Tool calls on llama.cpp: the prompt rendered by the GGUF's own template with the tools, and the calls generated
under a grammar (toolcalls.py) so they always parse.

- tool_choice "required" or a named function: the whole answer is generated under the call grammar.
- "auto": the model answers freely and its text streams as it comes; the moment it starts a call (the format's
  trigger, "<tool_call>" for hermes) the free generation stops and the call is generated under the grammar,
  continuing from the text so far (llama.cpp reuses the cached prefix). Text that might be the start of the
  trigger is held back until it is known not to be. Small models often start a call their own way instead
  (qwen2.5-coder-0.5b writes ```json {"name": ...}```, or the bare object): an answer that begins like that is
  taken for a call as well, and generated again from the start under the grammar.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from swarm_edge.errors import InferenceError
from swarm_edge.toolcalls import TRIGGERS, Toolset, format_of, grammar, parse, template_messages

if TYPE_CHECKING:
    from swarm_edge.workers.base import GenerateRequest
    from swarm_edge.workers.gguf import GGUFBackend

Piece = tuple[str, "str | None", bool]  # text, finish reason, shown
# How an answer that is a call may begin, whitespace removed (the format's own trigger, and the ways small models
# write one without it)
CALL_STARTS = ("<tool_call>", '```json{"name"', '```{"name"', '{"name"')
_SPACE = re.compile(r"\s+")
_NAMED = re.compile(r'^(?:```(?:json)?)?\{"name":"([^"\\]*)"')  # a bare call's name, once it is whole


class Calls:
    """One tool request on one GGUF backend; `found` holds the calls once `pieces` is exhausted."""

    def __init__(self, backend: GGUFBackend, request: GenerateRequest) -> None:
        self.backend, self.request = backend, request
        fmt = format_of(backend.llm.metadata.get("tokenizer.chat_template")) if backend.kind == "chat" else None
        if fmt is None:
            raise InferenceError("this model's chat template has no tool support; it cannot call tools")
        self.format: str = fmt
        tools = Toolset.from_openai(request.tools, request.tool_choice, request.parallel_tool_calls)
        assert tools is not None, "a tool request without tools"
        self.tools = tools
        self.found: list[dict[str, Any]] = []
        self.unfinished = False  # a call was begun and never ended (max_tokens)
        self.names = {f.name for f in tools.offered()}

    def pieces(self, common: dict[str, Any]) -> Generator[Piece, None, None]:
        from llama_cpp.llama_grammar import LlamaGrammar

        llm = self.backend.llm
        rendered = self.backend.formatter()(messages=template_messages(self.request.messages or []),
                                            tools=self.tools.openai())
        own = [rendered.stop] if isinstance(rendered.stop, str) else list(rendered.stop or [])
        kw = {**common, "stop": list(common.get("stop") or []) + own or None,
              "stopping_criteria": rendered.stopping_criteria}
        kw.pop("grammar", None)
        # the caller's stop strings end its text, not a call: a "\n" stop would cut every call at its first line
        call_kw = {**kw, "stop": own or None}

        def tokens(text: str) -> list[int]:
            return llm.tokenize(text.encode("utf-8"), add_bos=not rendered.added_special, special=True)

        said = ""
        if self.tools.choice == "auto":
            said, triggered = yield from self._free(llm.create_completion(prompt=tokens(rendered.prompt), **kw))
            if not triggered:
                return
        forced = LlamaGrammar.from_string(grammar(self.tools, self.format), verbose=False)
        text, reason = "", None
        chunks: Any = llm.create_completion(prompt=tokens(rendered.prompt + said), **{**call_kw, "grammar": forced})
        for chunk in chunks:
            choice: Any = chunk["choices"][0]
            piece = choice.get("text") or ""
            text += piece
            reason = choice.get("finish_reason") or reason
            yield piece, None, False
            if text.rstrip().endswith("</tool_call>") and _repeats(parse(text, self.format)):
                chunks.close()  # a small model that loops on one call: the copies are dropped, the answer ends
                reason = "stop"
                break
        calls = parse(text, self.format)
        self.found = [c for i, c in enumerate(calls) if c not in calls[:i]]  # a looping model's exact copies
        self.unfinished = text.count("<tool_call>") > len(calls)
        yield "", reason, False

    def _free(self, chunks: Any) -> Generator[Piece, None, tuple[str, bool]]:
        """The free answer, streamed; returns (the text shown, whether a call began)."""
        trigger = TRIGGERS[self.format]
        held, said = "", ""
        for chunk in chunks:
            choice = chunk["choices"][0]
            held += choice.get("text") or ""
            if not said:  # the answer's beginning: is it a call, written some way?
                start = _SPACE.sub("", held)
                named = _NAMED.match(start)
                if start.startswith(trigger) or named and named.group(1) in self.names:
                    chunks.close()
                    return "", True
                undecided = any(s.startswith(start) or start.startswith(s) for s in CALL_STARTS[1:]) and not named
                if (undecided or trigger.startswith(start)) and not choice.get("finish_reason"):
                    continue  # not known yet (a JSON answer whose "name" is no function offered is text)
            at = held.find(trigger)
            if at >= 0:
                before = held[:at]
                if before:
                    yield before, None, True
                chunks.close()  # the call is generated again, under the grammar
                return said + before, True
            keep = _partial(held, trigger)
            if len(held) > keep:
                out, held = held[:len(held) - keep], held[len(held) - keep:]
                said += out
                yield out, None, True
            if choice.get("finish_reason"):
                if held:
                    yield held, None, True
                    said += held
                yield "", choice["finish_reason"], True
                return said, False
        return said, False


def _repeats(calls: list[dict[str, Any]]) -> bool:
    """Whether the last call repeats an earlier one exactly."""
    return len(calls) > 1 and calls[-1] in calls[:-1]


def _partial(text: str, trigger: str) -> int:
    """The length of the longest end of `text` that begins `trigger` (text held back until it is known)."""
    for n in range(min(len(text), len(trigger) - 1), 0, -1):
        if trigger.startswith(text[-n:]):
            return n
    return 0


__all__ = ["Calls"]
