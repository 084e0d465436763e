"""GGUF backend on llama-cpp-python: chat (the model's own template, sandboxed), completion, streaming."""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Iterator
from contextlib import ExitStack
from typing import Any

from jinja2.exceptions import TemplateError

from swarm_edge.errors import ContextLengthError, InferenceError, ModelLoadError
from swarm_edge.toolcalls import template_messages
from swarm_edge.workers.base import GenerateRequest, LoadInfo
from swarm_edge.workers.gguf_calls import Calls as _Calls
from swarm_edge.workers.gguf_check import check_gguf

GGML_TYPE_Q8_0 = 8


def kv_options(options: dict[str, Any]) -> dict[str, Any]:
    """Llama's KV-cache arguments for ModelSpec.kv_type: q8_0 for K and V, with flash attention (llama.cpp cannot
    quantize V without it); f16 is llama.cpp's default."""
    if options.get("kv_type", "f16") == "q8_0":
        return {"type_k": GGML_TYPE_Q8_0, "type_v": GGML_TYPE_Q8_0, "flash_attn": True}
    return {}


class GGUFBackend:
    """One llama.cpp context over one GGUF file. Not thread-safe: llama.cpp contexts are not."""

    last_tokens: int | None = None  # embed() does not count tokens here

    def __init__(self, model_path: str, *, options: dict[str, Any]) -> None:
        """Check the file's structure, then load it with llama.cpp."""
        t0 = time.perf_counter()
        # The structure check raises CorruptModelError before native code sees a bad file. The engine has
        # already run it (pure Python, in the daemon) on this sha256-verified file and says so; skip it then.
        meta = {} if options.get("structure_checked") else check_gguf(model_path)
        self._stack = ExitStack()
        self._closed = False
        self._formatter = None
        try:
            from swarm_edge.workers.sampler import guided_llama

            Llama = guided_llama()
        except ImportError as exc:
            from swarm_edge.errors import BackendUnavailableError

            raise BackendUnavailableError("GGUF models need llama-cpp-python: pip install llama-cpp-python") from exc
        _avoid_amx()
        threads = int(options.get("threads") or 1)
        n_batch = int(options.get("n_batch", 512))
        try:
            # Llama picks the chat template from the GGUF metadata and renders it with jinja2's
            # ImmutableSandboxedEnvironment (the fix for CVE-2024-34359); we never pass a template of our own.
            self.llm = Llama(model_path=model_path, n_ctx=int(options.get("n_ctx", 2048)),
                             n_batch=n_batch, n_ubatch=int(options.get("n_ubatch") or min(n_batch, 512)),
                             n_threads=threads, n_threads_batch=threads, seed=int(options.get("seed", 0)),
                             use_mmap=bool(options.get("mmap", False)), verbose=False, **kv_options(options))
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"llama.cpp could not load {model_path}: {exc}") from exc
        self._stack.callback(self.llm.close)
        self.kind = options.get("kind", "chat")
        if self.kind == "chat" and not self.llm.metadata.get("tokenizer.chat_template"):
            self.kind = "completion"  # no template in the file: plain text is the honest interface
        self.info = LoadInfo(load_s=time.perf_counter() - t0,
                             meta={k: v for k, v in meta.items() if k != "chat_template"})

    def _sampling(self, request: GenerateRequest) -> tuple[dict[str, Any], Any]:
        """llama-cpp-python's keyword arguments for a request, and the log-prob meter when it asks for one."""
        common: dict[str, Any] = dict(max_tokens=request.max_tokens, temperature=request.temperature,
                                      top_p=request.top_p, stop=request.stop or None, stream=True)
        if request.seed is not None:
            common["seed"] = request.seed
        meter = _LogprobMeter() if request.logprobs else None
        if meter is not None:
            from llama_cpp import LogitsProcessorList

            common["logits_processor"] = LogitsProcessorList([meter])
        if request.json_schema is not None:
            from llama_cpp.llama_grammar import LlamaGrammar

            try:
                common["grammar"] = LlamaGrammar.from_json_schema(json.dumps(request.json_schema), verbose=False)
            except Exception as exc:  # the converter raises ValueError/KeyError/... for schemas it cannot express
                raise InferenceError(f"the JSON schema cannot be turned into a grammar: {exc}") from exc
        return common, meter

    def generate(self, request: GenerateRequest) -> Iterator[dict[str, Any]]:
        """Stream token events, then a done event with counts and timings (and the tool calls, if any)."""
        if self._closed:
            raise InferenceError("model is closed")
        common, meter = self._sampling(request)
        if not request.cache_prompt:
            # n_tokens = 0: llama-cpp-python finds no cached prefix and evaluates the whole prompt in the same batch
            # shapes as on a fresh context, so greedy output no longer depends on what this context ran before
            self.llm.reset()
        calls = _Calls(self, request) if request.tools and request.messages is not None else None
        t0 = time.perf_counter()
        t_first = t_last = None
        n = 0
        finish = None
        pieces = calls.pieces(common) if calls else self._pieces(request, common)
        try:
            for text, reason, shown in pieces:
                if reason:
                    finish = reason
                if text:
                    t_last = time.perf_counter()
                    if t_first is None:
                        t_first = t_last
                    n += 1
                    if shown:
                        yield {"type": "token", "text": text}
        except ValueError as exc:  # llama-cpp-python raises ValueError for prompts longer than n_ctx
            if "exceed context window" in str(exc):
                raise ContextLengthError(str(exc)) from exc
            raise InferenceError(str(exc)) from exc
        except TemplateError as exc:  # includes the sandbox's SecurityError for a hostile chat template
            raise InferenceError(f"the model's chat template failed: {type(exc).__name__}: {exc}") from exc
        finally:
            pieces.close()  # llama-cpp-python's generators first (a no-op once they finished), then its sampler
            self.llm.free_sampler()  # type: ignore[attr-defined]  # sampler.guided_llama's
        t_end = time.perf_counter()
        extra: dict[str, Any] = {}
        if calls is not None and (calls.found or calls.unfinished):
            extra = {"tool_calls": calls.found, "tool_call_unfinished": calls.unfinished or None}
            finish = "tool_calls" if finish != "length" and calls.found else finish
        yield {
            "type": "done", "finish_reason": finish or "stop", "chunks": n,
            "prompt_tokens": self._prompt_tokens(request),  # counted after the answer: off the TTFT path
            "ttft_s": (t_first - t0) if t_first else None,
            "decode_tok_s": (n - 1) / (t_last - t_first) if t_first and t_last and n > 1 and t_last > t_first else None,
            "generate_s": t_end - t0,
            **({"mean_logprob": meter.mean(), "min_logprob": meter.min()} if meter is not None else {}),
            **extra,
        }

    def _pieces(self, request: GenerateRequest,
                common: dict[str, Any]) -> Generator[tuple[str, str | None, bool], None, None]:
        """(text, finish reason, shown) for a plain chat or completion request."""
        if request.messages is not None and self.kind == "chat":
            chunks = self.llm.create_chat_completion(messages=request.messages, **common)  # type: ignore[arg-type]
            get = _chat_text
        else:
            prompt = request.prompt if request.prompt is not None else _flatten(request.messages or [])
            chunks = self.llm.create_completion(prompt=prompt, **common)  # type: ignore[assignment]
            get = _completion_text
        for chunk in chunks:
            text, reason = get(chunk)  # type: ignore[arg-type]
            yield text, reason, True

    def formatter(self):
        """The GGUF's own chat template, rendered in llama-cpp-python's sandboxed Jinja environment."""
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            eos, bos = self.llm.token_eos(), self.llm.token_bos()
            text = self.llm._model.token_get_text
            self._formatter = Jinja2ChatFormatter(  # type: ignore[assignment]
                template=self.llm.metadata["tokenizer.chat_template"], eos_token=text(eos) if eos != -1 else "",
                bos_token=text(bos) if bos != -1 else "", stop_token_ids=[eos])
        return self._formatter

    def _prompt_tokens(self, request: GenerateRequest) -> int | None:
        """Tokens of the prompt as llama-cpp-python evaluates it (template rendered, BOS added), or None."""
        try:
            if request.messages is not None and self.kind == "chat":
                if request.tools:
                    prompt = self.formatter()(messages=template_messages(request.messages), tools=request.tools).prompt
                else:
                    prompt = self.formatter()(messages=request.messages).prompt
            else:
                prompt = request.prompt if request.prompt is not None else _flatten(request.messages or [])
            return len(self.llm.tokenize(prompt.encode("utf-8"), special=True)) if prompt else 1
        except Exception:  # a count is a nicety; never fail an answer that was already produced over it
            return None

    def calibrate(self) -> None:
        """Evaluate one full batch of tokens, touching the largest working set a request can, then forget it."""
        n = max(1, min(self.llm.n_batch, self.llm.n_ctx() - 8))
        filler = self.llm.tokenize(b" calibration" * n, add_bos=False)[:n]
        self.llm.eval(filler)
        self.llm.reset()

    def embed(self, texts: list[str]) -> list[list[float]]:
        """GGUF embedding models are not supported yet."""
        raise InferenceError("this GGUF backend generates text; use an ONNX embedding model for vectors")

    def close(self) -> None:
        """Free the llama.cpp context and model; idempotent."""
        if not self._closed:
            self._closed = True
            self._stack.close()


class _LogprobMeter:
    """A logits processor that measures how sure the model was of each token it produced.

    llama-cpp-python only returns logprobs with `logits_all=True` (an n_ctx x n_vocab scores buffer: 1.2 GB
    for Qwen's 152k vocabulary). A processor sees each step's logits before sampling; the token sampled
    from them is the last input id at the next step, so its log-probability is read one step later. The
    last token (usually end-of-turn) is not counted. Costs one log-sum-exp over the vocabulary per token.
    """

    observes_only = True  # returns the logits unchanged (sampler.py may then take greedy shortcuts)

    def __init__(self) -> None:
        self.values: list[float] = []
        self._prev = None  # the previous step's logits and their log-sum-exp
        self._prev_lse = 0.0
        self._seen = -1  # how many input ids the last call saw

    def __call__(self, input_ids, scores):
        import numpy as np

        if len(input_ids) == self._seen:  # the same step again (a grammar rejected the free choice): measured
            return scores
        if len(input_ids) != self._seen + 1:  # another generation (a call generated again): no previous step
            self._prev = None
        self._seen = len(input_ids)
        if self._prev is not None and len(input_ids):  # input_ids: the evaluated tokens, newest last
            token = int(input_ids[-1])
            if 0 <= token < self._prev.shape[0]:
                self.values.append(float(self._prev[token]) - self._prev_lse)
        top = float(scores.max())
        self._prev_lse = top + float(np.log(np.exp(scores - top).sum()))
        self._prev = np.array(scores, dtype=np.float32, copy=True)  # type: ignore[assignment]
        return scores

    def mean(self) -> float | None:
        return round(sum(self.values) / len(self.values), 4) if self.values else None

    def min(self) -> float | None:
        return round(min(self.values), 4) if self.values else None


def _chat_text(chunk: dict) -> tuple[str, str | None]:
    choice = chunk["choices"][0]
    return choice.get("delta", {}).get("content") or "", choice.get("finish_reason")


def _completion_text(chunk: dict) -> tuple[str, str | None]:
    choice = chunk["choices"][0]
    return choice.get("text") or "", choice.get("finish_reason")


def _flatten(messages: list[dict[str, str]]) -> str:
    """A completion model has no template: the conversation becomes plain text to continue."""
    return "\n".join(m.get("content", "") for m in messages)


def _avoid_amx() -> None:
    """Turn off llama.cpp's extra weight buffers when the library was built with AMX kernels.

    Those kernels segfault on the first multi-token batch on some Sapphire Rapids VMs (llama.cpp #20824).
    scripts/setup builds without AMX; this guards a llama-cpp-python installed some other way. The switch
    (`use_extra_bufts`) is not a Llama() argument, so the process-wide default params are wrapped: fine in
    a process that hosts one model, which is what a worker is.
    """
    import llama_cpp
    import llama_cpp.llama as llama_module

    if getattr(llama_cpp, "_swarm_edge_no_amx", False):
        return
    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    if "AMX_INT8 = 1" not in info:
        return
    original = llama_cpp.llama_model_default_params

    def default_params():
        params = original()
        params.use_extra_bufts = False
        return params

    llama_module.llama_cpp.llama_model_default_params = default_params
    llama_cpp._swarm_edge_no_amx = True  # type: ignore[attr-defined]
