"""The llama.cpp backend: GGUF models through ``llama-cpp-python``, the fast path on CPUs and Macs.

    changjak serve --backend llamacpp                  # serves an exported GGUF version
    CHANGJAK_SERVE__LLAMACPP__N_THREADS=4 changjak serve --backend llamacpp

``load(base_path, adapter_dir)`` finds the model to run, in this order: a model GGUF inside
``adapter_dir`` (what ``changjak export --format gguf`` registers: base and adapter merged), else
the GGUF ``base_path`` is or holds, with a GGUF LoRA adapter (``*adapter*.gguf``/``*lora*.gguf``
in ``adapter_dir``) applied at load. A plain PEFT adapter must be exported first.

Up to ``serve.llamacpp.parallel`` requests (default 8) decode together in one context, one
``llama_decode`` a step (:mod:`.llamacpp_batching`); more wait in a queue of ``serve.max_queue``,
then get a 503. Closing the stream stops its decode within one step. The prompt comes from the GGUF's own chat template (ChatML for Qwen2), and stop strings
are cut across token boundaries by :class:`StopScanner`. At load, one token is decoded in a
subprocess first: a build that crashes there (AMX, see docs/inference.md) is retried with
``use_extra_bufts=False`` instead of taking the server down.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from changjak.backends.inference.base import GenerationChunk, GenerationParams
from changjak.errors import BackendError

if TYPE_CHECKING:
    from llama_cpp import Llama

    from changjak.settings import LlamaCppSettings

logger = logging.getLogger(__name__)
_EXPORT_HINT = "run `changjak export --format gguf` and serve the version it registers"
_probed: dict[tuple[str, str | None, bool], bool] = {}  # (model, lora, extra bufts) -> decoded fine
_params_lock = threading.Lock()


def find_gguf(base_path: Path | None, adapter_dir: Path | None) -> tuple[Path, Path | None]:
    """The model GGUF to load and the GGUF LoRA adapter to apply (None: no adapter)."""
    adapters, models = [], []
    if adapter_dir is not None and Path(adapter_dir).is_dir():
        for p in sorted(Path(adapter_dir).glob("*.gguf")):
            (adapters if ("adapter" in p.name or "lora" in p.name) else models).append(p)
    if models:
        return models[0], None  # an exported model: base and adapter already merged
    base = Path(base_path) if base_path is not None else None
    if base is not None and base.is_dir():
        found = [p for p in sorted(base.glob("*.gguf")) if "adapter" not in p.name]
        base = found[0] if found else None
    if base is None or not base.is_file() or base.suffix != ".gguf":
        raise BackendError(f"the llama.cpp backend needs a GGUF model; found none at {base_path}", hint=_EXPORT_HINT)
    if adapter_dir is not None and not adapters and (Path(adapter_dir) / "adapter_config.json").is_file():
        raise BackendError(f"the LoRA adapter in {adapter_dir} is not in GGUF form", hint=_EXPORT_HINT)
    return base, adapters[0] if adapters else None


def _options() -> LlamaCppSettings:
    from changjak.settings import get_settings

    return get_settings().serve.llamacpp


class LlamaCppBackend:
    def __init__(self, llm: Llama, *, model_id: str, slots: int = 1, n_ctx_seq: int | None = None,
                 max_queue: int = 64) -> None:
        from changjak.backends.inference.llamacpp_batching import Batcher

        self.model_id = model_id
        self.llm = llm
        self._closed = False
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise BackendError(f"the GGUF of {model_id} carries no chat template",
                               hint="convert a chat model whose tokenizer_config has one")
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        eos, bos = llm.token_eos(), llm.token_bos()
        self._format = Jinja2ChatFormatter(template, eos_token=_piece(llm, eos), bos_token=_piece(llm, bos))
        self.n_ctx_seq = n_ctx_seq or llm.n_ctx() // slots
        self.batcher = Batcher(llm, slots=slots, n_ctx_seq=self.n_ctx_seq, max_queue=max_queue,
                               piece=lambda token: llm.detokenize([token]))

    @property
    def decoded(self) -> int:
        """Tokens sampled so far, over every request."""
        return self.batcher.decoded

    @classmethod
    def load(cls, base_path: Path | None, adapter_dir: Path | None = None, *, device: str = "cpu",
             dtype: str = "auto", model_id: str, options: LlamaCppSettings | None = None,
             max_queue: int = 64) -> LlamaCppBackend:
        """Open one context with ``options.parallel`` sequence slots on the GGUF :func:`find_gguf` finds."""
        opts = options or _options()
        model, lora = find_gguf(base_path, adapter_dir)
        extra_bufts = opts.use_extra_bufts
        if opts.probe and extra_bufts and not probe(model, lora, opts.n_threads, extra_bufts=True):
            logger.warning("decoding one token of %s crashed; retrying with use_extra_bufts=False "
                           "(slower; rebuild llama-cpp-python with `make` to fix)", model.name)
            extra_bufts = False
            if not probe(model, lora, opts.n_threads, extra_bufts=False):
                raise BackendError(f"llama.cpp crashes decoding {model.name} on this machine",
                                   hint="rebuild llama-cpp-python with the Makefile (`make .venv/.llamacpp`)")
        llm = open_llama(model, lora, opts, extra_bufts=extra_bufts)
        logger.info("loaded %s (%s, lora %s): one llama.cpp context, %d sequences batched",
                    model_id, model, lora, opts.parallel)
        return cls(llm, model_id=model_id, slots=opts.parallel, n_ctx_seq=opts.n_ctx, max_queue=max_queue)

    async def generate(self, messages: list[dict], params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        """Stream the reply as the decode thread makes it; closing this iterator drops the request."""
        from changjak.backends.inference.llamacpp_batching import Request

        if self._closed:
            raise BackendError("the llama.cpp backend is closed")
        if params.adapter is not None:
            raise BackendError(f"the llama.cpp backend loads no adapter by name ({params.adapter!r})",
                               hint="serve each exported version with its own backend")
        request = Request(self._encode(messages), params, loop=asyncio.get_running_loop(), text=_Utf8Text())
        self.batcher.submit(request)
        async with contextlib.aclosing(request.chunks()) as chunks:  # closed with this one: cancels
            async for chunk in chunks:
                yield chunk

    def _encode(self, messages: list[dict]) -> list[int]:
        if self._closed:  # the model is freed: llama.cpp would read freed memory
            raise BackendError("the llama.cpp backend is closed")
        llm = self.llm
        prompt = self._format(messages=messages).prompt
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if len(tokens) > 1 and tokens[0] == tokens[1] == llm.token_bos():
            tokens = tokens[1:]  # the template wrote BOS itself
        if len(tokens) >= self.n_ctx_seq:
            raise BackendError(f"the prompt has {len(tokens)} tokens; the context holds {self.n_ctx_seq}",
                               hint="shorten the conversation or raise serve.llamacpp.n_ctx")
        return tokens

    async def ready(self) -> bool:
        """Loaded and not closed (no probe generation: that would queue behind real requests)."""
        return not self._closed

    async def aclose(self) -> None:
        """Stop generating, wait for the decode thread's running step, and free the context."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self.batcher.close, join=True)
        self.llm.close()


class _Utf8Text:
    """Token bytes to text that never ends inside a character: a split Hangul syllable waits."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._held = ""  # trailing replacement characters: an invalid byte, or one the next fixes

    def add(self, data: bytes) -> str:
        text = self._held + self._decoder.decode(data)
        body = text.rstrip("\ufffd")
        self._held = text[len(body):]
        return body

    def end(self) -> str:
        """What is left at the end; a character cut off by the end is dropped, not shown broken."""
        return (self._held + self._decoder.decode(b"", final=True)).rstrip("\ufffd")


def _piece(llm: Llama, token: int) -> str:
    if token < 0:
        return ""
    return llm._model.token_get_text(token)


def open_llama(model: Path, lora: Path | None, opts: LlamaCppSettings, *, extra_bufts: bool) -> Llama:
    """One llama.cpp context on ``model``; ``extra_bufts=False`` is the AMX-crash fallback."""
    from llama_cpp import Llama

    kwargs: dict[str, Any] = {"n_ctx": opts.n_ctx * opts.parallel, "n_batch": opts.n_batch,
                              "n_threads": opts.n_threads, "n_threads_batch": opts.n_threads, "verbose": False}
    if lora is not None:
        kwargs["lora_path"] = str(lora)
    try:
        with _model_params(use_extra_bufts=extra_bufts, n_seq_max=opts.parallel):
            return Llama(str(model), **kwargs)
    except (ValueError, RuntimeError) as e:
        raise BackendError(f"llama.cpp cannot load {model.name}: {e}",
                           hint="check that the file is a complete GGUF (re-run `changjak export`)") from e


@contextlib.contextmanager
def _model_params(*, use_extra_bufts: bool, n_seq_max: int = 1) -> Iterator[None]:
    """``Llama`` takes neither ``use_extra_bufts`` nor ``n_seq_max``: hand it default model and
    context params with them set. Each sequence gets its own ``n_ctx / n_seq_max`` cells (not one
    unified cache: measured on the demo model, 8 sequences at 4096 cells each decoded a step in
    134 ms split, 475-745 ms unified, whose attention masks span every sequence's cells)."""
    import llama_cpp.llama as module

    lib = module.llama_cpp
    with _params_lock:
        model_defaults, context_defaults = lib.llama_model_default_params, lib.llama_context_default_params

        def model_params() -> Any:
            p = model_defaults()
            p.use_extra_bufts = use_extra_bufts
            return p

        def context_params() -> Any:
            p = context_defaults()
            p.n_seq_max, p.kv_unified = n_seq_max, False
            return p

        lib.llama_model_default_params, lib.llama_context_default_params = model_params, context_params
        try:
            yield
        finally:
            lib.llama_model_default_params, lib.llama_context_default_params = model_defaults, context_defaults


_PROBE = """
import sys
from pathlib import Path
from changjak.backends.inference.llamacpp import _model_params
from llama_cpp import Llama
with _model_params(use_extra_bufts=sys.argv[3] == "1"):
    llm = Llama(sys.argv[1], lora_path=sys.argv[2] or None, n_ctx=64, n_threads=int(sys.argv[4]), verbose=False)
next(llm.generate(llm.tokenize(b"hello"), temp=0.0))
"""


def probe(model: Path, lora: Path | None, n_threads: int, *, extra_bufts: bool) -> bool:
    """Whether one token decodes without a crash (remembered per file and setting).

    A crash is the probe killed by a signal (SIGSEGV, SIGILL); any other failure is a BackendError.
    """
    key = (str(model), str(lora) if lora else None, extra_bufts)
    if key not in _probed:
        argv = [sys.executable, "-c", _PROBE, str(model), str(lora or ""), "1" if extra_bufts else "0", str(n_threads)]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        if result.returncode > 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise BackendError(f"llama.cpp cannot load {model.name}: {last}",
                               hint="check that the file is a complete GGUF (re-run `changjak export`)")
        if result.returncode < 0:
            logger.warning("llama.cpp probe of %s died with signal %d", model.name, -result.returncode)
        _probed[key] = result.returncode == 0
    return _probed[key]
