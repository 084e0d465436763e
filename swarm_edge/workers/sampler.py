"""Grammar-constrained sampling that costs what free sampling costs, as llama.cpp's own server does it.

llama-cpp-python puts the grammar in the sampler chain, so every token checks all of the vocabulary against the
grammar (151,936 candidates for Qwen2.5) before picking one: measured here, that halved the decode speed of
qwen2.5-coder-0.5b. llama.cpp's common sampler (common/sampling.cpp, `common_sampler_sample`) samples freely
first, asks the grammar about that one token, and filters the whole vocabulary only when the grammar rejects it.
With greedy decoding the result is the same token either way: the argmax of the free logits, when the grammar
allows it, is the argmax of the allowed ones. With temperature it differs from full filtering exactly as
llama.cpp's does: the token is drawn from the free distribution when that draw is allowed.

`GrammarFirst` keeps the interface llama-cpp-python's `Llama.sample` uses (`sample(ctx, idx)`), so `Guided`
(a `Llama` whose `_init_sampler` builds one when a grammar is given) is the only change the worker needs.
"""

from __future__ import annotations

import ctypes
import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from llama_cpp import Llama


class GrammarFirst:
    """The free chain (penalties, temperature or greedy, ...) and the grammar as a separate sampler."""

    SHORTLIST = 64  # on a rejection under plain greedy decoding, the best tokens asked first
    LOOP_BYTES, LOOP_PERIOD = 64, 32  # a loop: the last 64 bytes (at least 4 turns) repeat a cycle of <= 32

    def __init__(self, chain: Any, model: Any, grammar: Any, n_vocab: int, greedy: bool = False) -> None:
        import llama_cpp

        self._c = llama_cpp
        self.chain = chain  # a llama_cpp._internals.LlamaSampler: owns and frees its samplers
        self.grammar = llama_cpp.llama_sampler_init_grammar(
            model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))
        if not self.grammar:
            raise ValueError("llama.cpp refused the grammar")
        self.n_vocab = n_vocab
        self.greedy = greedy  # the chain is argmax of the raw logits: nothing reorders them
        dtype = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
        self._all = np.zeros(n_vocab, dtype=dtype)
        self._ids = np.arange(n_vocab, dtype=np.intc)
        self._one = np.zeros(1, dtype=dtype)
        self.rejections = 0  # tokens the free choice got wrong (for tests and curiosity)
        self.loops = 0  # loops broken
        self._model = model
        self._pieces: dict[int, bytes] = {}
        self._tail = b""  # the end of what was generated, to see a loop in

    def _array(self, buf: np.ndarray) -> Any:
        c = self._c
        return c.llama_token_data_array(data=buf.ctypes.data_as(ctypes.POINTER(c.llama_token_data)),
                                        size=len(buf), selected=-1, sorted=False)

    def _pick(self, buf: np.ndarray, arr: Any) -> int:
        self._c.llama_sampler_apply(self.chain.sampler, ctypes.byref(arr))
        # The chain may reorder or shrink the array in place (top-k, ...); selected indexes what it left.
        if not 0 <= arr.selected < arr.size:
            raise ValueError("the sampler chain selected no token")
        data = ctypes.cast(arr.data, ctypes.POINTER(self._c.llama_token_data))
        return int(data[arr.selected].id)

    def _allowed(self, token: int) -> bool:
        """Whether the grammar takes `token` next (asked about that one token only)."""
        self._one["id"], self._one["logit"], self._one["p"] = token, 0.0, 0.0
        self._c.llama_sampler_apply(self.grammar, ctypes.byref(self._array(self._one)))
        return not math.isinf(float(self._one["logit"][0]))

    def _fill(self, logits: np.ndarray) -> Any:
        """All candidates, in token order (a chain may have sorted or cut the buffer last time)."""
        self._all["id"] = self._ids
        self._all["logit"] = logits
        self._all["p"] = 0.0
        return self._array(self._all)

    def sample(self, ctx: Any, idx: int = -1) -> int:
        c = self._c
        logits = np.ctypeslib.as_array(c.llama_get_logits_ith(ctx.ctx, idx), shape=(self.n_vocab,))
        token = self._pick(self._all, self._fill(logits))
        if not self._allowed(token):  # rejected: now the grammar filters, then the chain picks
            self.rejections += 1
            token = self._shortlisted(logits) if self.greedy else -1
            if token < 0:
                arr = self._fill(logits)
                c.llama_sampler_apply(self.grammar, ctypes.byref(arr))
                token = self._pick(self._all, arr)
                # accepting a token the grammar refuses aborts llama.cpp (no token allowed, or a sampler after
                # the grammar that revived a masked one): an error instead
                if not self._allowed(token):
                    raise ValueError("the grammar allows no token here")
        cycle = self._cycle()
        if cycle is not None and self._continues(token, cycle):
            token = self._break(logits, cycle, token)
        self._tail = (self._tail + self._piece(token))[-2 * self.LOOP_BYTES:]
        c.llama_sampler_accept(self.grammar, token)
        c.llama_sampler_accept(self.chain.sampler, token)
        return token

    def _piece(self, token: int) -> bytes:
        if token not in self._pieces:
            self._pieces[token] = self._model.detokenize([token])
        return self._pieces[token]

    def _cycle(self) -> bytes | None:
        """The cycle the answer is stuck in (the bytes that would come next), when the last LOOP_BYTES (and at
        least four turns) repeat one of at most LOOP_PERIOD bytes: a small model under a grammar can loop inside
        a string or a number ("1234567890123...") until max_tokens cuts the JSON off."""
        least, times = (24, 3) if self.loops else (self.LOOP_BYTES, 4)  # once it has looped, sooner
        for p in range(1, self.LOOP_PERIOD + 1):
            n = max(least, times * p)
            seg = self._tail[-n:]
            if len(seg) == n and seg[p:] == seg[:-p]:
                return seg[-p:]
        return None

    def _continues(self, token: int, cycle: bytes) -> bool:
        piece = self._piece(token)
        return bool(piece) and (cycle * (len(piece) // len(cycle) + 1))[:len(piece)] == piece

    def _break(self, logits: np.ndarray, cycle: bytes, token: int) -> int:
        """The most likely token the grammar allows that does not go on with the cycle (a closing quote, a
        comma, ...): the loop ends and the answer completes under the grammar. Answers that do not loop are
        untouched."""
        arr = self._fill(logits)
        self._c.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        allowed = np.flatnonzero(~np.isinf(self._all["logit"]))
        best = allowed[np.argsort(-self._all["logit"][allowed], kind="stable")][:4096]
        order = [int(self._all["id"][i]) for i in best]  # pieces are looked up for these only
        # a model that loops again after one break is stuck: from then on the loop ends by closing what is open
        closing = [t for t in order if any(ch in self._piece(t) for ch in b'"]},')] if self.loops else []
        for candidate in closing + order:
            if self._piece(candidate) and not self._continues(candidate, cycle):
                self.loops += 1
                return candidate
        return token

    def _shortlisted(self, logits: np.ndarray) -> int:
        """Greedy only: the best allowed token among the SHORTLIST best, or -1 (then the whole vocabulary is
        filtered) when none is allowed or the answer is not certain. Exact: the argmax over the allowed tokens is
        the first allowed one in order of logit, ties to the lowest id as greedy breaks them; a tie with the last
        place (a lower id may lie beyond it) or a non-finite logit is left to the full filter."""
        k = min(self.SHORTLIST, self.n_vocab)
        top = np.argpartition(logits, -k)[-k:]
        top = top[np.lexsort((top, -logits[top]))]
        buf = np.zeros(len(top), dtype=self._all.dtype)
        buf["id"], buf["logit"] = top, logits[top]
        self._c.llama_sampler_apply(self.grammar, ctypes.byref(self._array(buf)))
        allowed = np.flatnonzero(~np.isinf(buf["logit"]))
        if not len(allowed):
            return -1
        best = float(logits[top[allowed[0]]])
        if not math.isfinite(best) or (k < self.n_vocab and best <= float(logits[top[-1]])):
            return -1
        return int(top[allowed[0]])

    def close(self) -> None:
        if getattr(self, "grammar", None):
            self._c.llama_sampler_free(self.grammar)
            self.grammar = None
        if getattr(self, "chain", None) is not None:
            self.chain.close()

    def __del__(self) -> None:
        self.close()


def guided_llama() -> type[Llama]:
    """llama_cpp.Llama, with grammars sampled grammar-first (built on first use: llama_cpp loads lazily)."""
    from llama_cpp import Llama

    class Guided(Llama):
        def free_sampler(self) -> None:
            """Free the last generation's sampler now. llama-cpp-python builds one per generation and drops the last
            one in a reference cycle that holds llama.cpp's candidates buffer (n_vocab x 12 B: 1.8 MiB on a Qwen)
            until Python's cyclic collector runs: measured, a worker's RSS grew 1.8 MiB a request on the 1.5B (on
            smollm2 it levelled off near 30 MiB), which its PSS, and so the budget, counted."""
            sampler, self._sampler = getattr(self, "_sampler", None), None
            if sampler is not None:
                sampler.close()

        def _init_sampler(self, *args: Any, **kwargs: Any) -> Any:
            self.free_sampler()  # the previous one, about to be dropped (a tool call's passes build several)
            grammar = kwargs.pop("grammar", None)
            chain = super()._init_sampler(*args, **kwargs)
            if grammar is None:
                return chain
            plain = {"temp": 0.0, "repeat_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0,
                     "mirostat_mode": 0}
            # processors that only watch the logits (the worker's log-prob meter) leave greedy decoding greedy
            watching = all(getattr(p, "observes_only", False) for p in kwargs.get("logits_processor") or ())
            greedy = not args and all(kwargs.get(k, v) == v for k, v in plain.items()) and "temp" in kwargs \
                and watching
            return GrammarFirst(chain, self._model, grammar, self._n_vocab, greedy=greedy)

    return Guided
