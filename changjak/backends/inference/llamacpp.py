"""The llama.cpp backend: GGUF models through ``llama-cpp-python``, the fast path on CPUs and Macs.

    changjak serve --backend llamacpp                  # serves an exported GGUF version
    CHANGJAK_SERVE__LLAMACPP__N_THREADS=4 changjak serve --backend llamacpp

``load(base_path, adapter_dir)`` finds the model to run, in this order: a model GGUF inside
``adapter_dir`` (what ``changjak export --format gguf`` registers: base and adapter merged), else
the GGUF ``base_path`` is or holds, with a GGUF LoRA adapter (``*adapter*.gguf``/``*lora*.gguf``
in ``adapter_dir``) applied at load. A plain PEFT adapter must be exported first.

Requests are served by a pool of ``serve.llamacpp.parallel`` contexts (default 1), each decoding
in its own thread; more requests wait in a queue. Closing the stream stops its decode within one
token. The prompt comes from the GGUF's own chat template (ChatML for Qwen2), and stop strings
are cut across token boundaries by :class:`StopScanner`. At load, one token is decoded in a
subprocess first: a build that crashes there (AMX, see docs/inference.md) is retried with
``use_extra_bufts=False`` instead of taking the server down.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import random
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from changjak.backends.inference.base import FinishReason, GenerationChunk, GenerationParams, StopScanner
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
    def __init__(self, pool: list[Llama], *, model_id: str) -> None:
        self.model_id = model_id
        self.decoded = 0  # tokens sampled so far, over every request
        self._idle: asyncio.Queue[Llama] | None = None  # built on first use, inside the event loop
        self._pool = pool
        self._executor = ThreadPoolExecutor(max_workers=len(pool), thread_name_prefix="llamacpp")
        self._stops: set[threading.Event] = set()
        self._closed = False
        llm = pool[0]
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise BackendError(f"the GGUF of {model_id} carries no chat template",
                               hint="convert a chat model whose tokenizer_config has one")
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        eos, bos = llm.token_eos(), llm.token_bos()
        self._format = Jinja2ChatFormatter(template, eos_token=_piece(llm, eos), bos_token=_piece(llm, bos))

    @classmethod
    def load(cls, base_path: Path | None, adapter_dir: Path | None = None, *, device: str = "cpu",
             dtype: str = "auto", model_id: str, options: LlamaCppSettings | None = None) -> LlamaCppBackend:
        """Open ``options.parallel`` contexts on the GGUF found by :func:`find_gguf`."""
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
        pool = [open_llama(model, lora, opts, extra_bufts=extra_bufts) for _ in range(opts.parallel)]
        logger.info("loaded %s (%s, lora %s) in %d llama.cpp context(s)", model_id, model, lora, len(pool))
        return cls(pool, model_id=model_id)

    async def generate(self, messages: list[dict], params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        """Stream the reply from a pooled context's thread; closing this iterator stops it."""
        if self._closed:
            raise BackendError("the llama.cpp backend is closed")
        if params.adapter is not None:
            raise BackendError(f"the llama.cpp backend loads no adapter by name ({params.adapter!r})",
                               hint="serve each exported version with its own backend")
        if self._idle is None:
            self._idle = asyncio.Queue()
            for llm in self._pool:
                self._idle.put_nowait(llm)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenerationChunk | asyncio.Future] = asyncio.Queue()
        stop = threading.Event()
        llm = await self._idle.get()
        try:
            prompt = self._encode(llm, messages)
            self._stops.add(stop)
            worker = loop.run_in_executor(self._executor, self._decode, llm, prompt, params, stop,
                                          lambda chunk: loop.call_soon_threadsafe(queue.put_nowait, chunk))
        except BaseException:
            self._idle.put_nowait(llm)
            raise

        def finished(future: asyncio.Future) -> None:
            self._stops.discard(stop)
            self._idle.put_nowait(llm)  # free only once its thread has let go of it
            queue.put_nowait(future)  # after every chunk the thread emitted

        worker.add_done_callback(finished)
        try:
            while not isinstance(item := await queue.get(), asyncio.Future):
                yield item
            if (error := item.exception()) is not None:
                raise BackendError(f"generation failed: {error}") from error
        finally:
            stop.set()

    def _encode(self, llm: Llama, messages: list[dict]) -> list[int]:
        prompt = self._format(messages=messages).prompt
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if len(tokens) > 1 and tokens[0] == tokens[1] == llm.token_bos():
            tokens = tokens[1:]  # the template wrote BOS itself
        if len(tokens) >= llm.n_ctx():
            raise BackendError(f"the prompt has {len(tokens)} tokens; the context holds {llm.n_ctx()}",
                               hint="shorten the conversation or raise serve.llamacpp.n_ctx")
        return tokens

    def _decode(self, llm: Llama, prompt: list[int], params: GenerationParams, stop: threading.Event,
                emit: Callable[[GenerationChunk], None]) -> None:
        """In a pool thread: sample until EOS, a stop string, max_tokens, the context's end or ``stop``."""
        import llama_cpp

        llm.set_seed(params.seed if params.seed is not None else random.getrandbits(31))
        budget = min(params.max_tokens, llm.n_ctx() - len(prompt))
        text, scanner = _Utf8Text(), StopScanner(params.stop)
        finish: FinishReason = "length"
        n = 0
        hit = False
        tokens: Iterator[int] = llm.generate(prompt, top_k=0, top_p=params.top_p, min_p=0.0,
                                             temp=max(params.temperature, 0.0), repeat_penalty=1.0)
        with contextlib.closing(tokens):  # type: ignore[type-var]
            while n < budget:
                token = next(tokens)
                self.decoded += 1
                if stop.is_set():
                    return
                if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                    finish = "stop"
                    break
                n += 1
                safe, hit = scanner.feed(text.add(llm.detokenize([token])))
                if safe:
                    emit(GenerationChunk(safe))
                if hit:
                    finish = "stop"
                    break
        if not hit:
            safe, hit = scanner.feed(text.end())
            if hit:
                finish = "stop"
            if tail := safe + ("" if hit else scanner.flush()):
                emit(GenerationChunk(tail))
        emit(GenerationChunk(finish_reason=finish, prompt_tokens=len(prompt), completion_tokens=n))

    async def ready(self) -> bool:
        """Loaded and not closed (no probe generation: that would queue behind real requests)."""
        return not self._closed

    async def aclose(self) -> None:
        """Stop every running generation, wait for the threads, and free the contexts."""
        self._closed = True
        for stop in list(self._stops):
            stop.set()
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        for llm in self._pool:
            llm.close()
        self._pool.clear()


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

    kwargs: dict[str, Any] = {"n_ctx": opts.n_ctx, "n_batch": opts.n_batch, "n_threads": opts.n_threads,
                              "n_threads_batch": opts.n_threads, "verbose": False}
    if lora is not None:
        kwargs["lora_path"] = str(lora)
    try:
        with _model_params(use_extra_bufts=extra_bufts):
            return Llama(str(model), **kwargs)
    except (ValueError, RuntimeError) as e:
        raise BackendError(f"llama.cpp cannot load {model.name}: {e}",
                           hint="check that the file is a complete GGUF (re-run `changjak export`)") from e


@contextlib.contextmanager
def _model_params(*, use_extra_bufts: bool) -> Iterator[None]:
    """``Llama`` takes no ``use_extra_bufts``: hand it default model params with it set."""
    import llama_cpp.llama as module

    with _params_lock:
        original = module.llama_cpp.llama_model_default_params

        def params() -> Any:
            p = original()
            p.use_extra_bufts = use_extra_bufts
            return p

        module.llama_cpp.llama_model_default_params = params
        try:
            yield
        finally:
            module.llama_cpp.llama_model_default_params = original


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
