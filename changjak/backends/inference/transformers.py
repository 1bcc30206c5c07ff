"""The transformers backend: a base model with its LoRA adapter merged in, decoded one token at a
time with the KV cache in a worker thread, so replies stream as they are made.

    changjak serve --backend transformers

One request runs on the model at a time (batching is vLLM's job). Closing the reply's iterator
stops the decode loop within one step. Text is emitted only once it no longer ends inside a
multi-byte character, so Hangul is never split, and stop strings are cut even when they span
tokens.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from changjak.backends.inference.base import FinishReason, GenerationChunk, GenerationParams, StopScanner
from changjak.errors import BackendError

logger = logging.getLogger(__name__)
_CONTEXT_TOKENS = 4  # prompt tokens decoded with the reply, so tokenizers that drop a leading space keep it


class TransformersBackend:
    def __init__(self, model: Any, tokenizer: Any, *, model_id: str) -> None:
        if tokenizer.chat_template is None:
            raise BackendError(f"the tokenizer of {model_id} has no chat template",
                               hint="serve an instruction-tuned (chat) base model")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.eos_ids = _eos_ids(model, tokenizer)
        # transformers renamed forward's `past_key_values` to `cache` in 5.x; accept both spellings
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self._lock = asyncio.Lock()  # released when the decode thread ends, not when the consumer leaves
        self._stop: threading.Event | None = None  # the running generation's
        self._closed = False

    @classmethod
    def load(cls, base_path: Path, adapter_dir: Path | None = None, *, device: str = "auto",
             dtype: str = "auto", model_id: str) -> TransformersBackend:
        """Load the base model and tokenizer, and merge the LoRA adapter from ``adapter_dir``."""
        from changjak.base_model import load_causal_lm, load_tokenizer
        from changjak.train.device import pick_device, pick_dtype

        device = pick_device(device)
        model = load_causal_lm(Path(base_path), device=device, dtype=pick_dtype(device, dtype))
        tokenizer = load_tokenizer(Path(base_path))
        if adapter_dir is not None:
            from peft import PeftModel

            try:
                model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
            except (OSError, ValueError) as e:
                raise BackendError(f"cannot load the LoRA adapter in {adapter_dir}: {e}",
                                   hint="check that the registered version's adapter matches its base model") from e
        logger.info("loaded %s from %s (adapter: %s) on %s", model_id, base_path, adapter_dir, model.device)
        return cls(model, tokenizer, model_id=model_id)

    async def generate(self, messages: list[dict], params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        """Stream the reply token by token from a worker thread; closing this iterator stops it."""
        if self._closed:
            raise BackendError("the transformers backend is closed")
        prompt = self.encode(messages)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenerationChunk | asyncio.Future] = asyncio.Queue()
        stop = threading.Event()

        def emit(chunk: GenerationChunk) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, chunk)

        def finished(worker: asyncio.Future) -> None:
            self._lock.release()
            queue.put_nowait(worker)  # after every chunk the thread emitted: the loop runs callbacks in order

        await self._lock.acquire()
        try:
            self._stop = stop
            worker = loop.run_in_executor(None, self._decode, self.model, prompt, params, stop, emit)
        except BaseException:
            self._lock.release()
            raise
        worker.add_done_callback(finished)
        try:
            while not isinstance(item := await queue.get(), asyncio.Future):
                yield item
            if (error := item.exception()) is not None:
                raise BackendError(f"generation failed: {error.__class__.__name__}") from error
        finally:
            stop.set()

    async def ready(self) -> bool:
        """Loaded and not closed (no probe generation: that would queue behind real requests)."""
        return not self._closed

    async def aclose(self) -> None:
        """Stop the running generation (its thread ends within one step) and drop the model.

        It does not wait for that thread: at shutdown the loop that would hear of its end may be gone.
        """
        self._closed = True
        if self._stop is not None:
            self._stop.set()
        self.model = None

    def encode(self, messages: list[dict]) -> list[int]:
        """The prompt's token ids: the chat template with the assistant's turn opened."""
        # Special tokens typed by a user stay text, so nobody can open a system turn from a message.
        encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                     sanitize_control_tokens=True, return_dict=True)
        return list(encoded["input_ids"])

    def _decode(self, model: Any, prompt: list[int], params: GenerationParams, stop: threading.Event,
                emit: Callable[[GenerationChunk], None]) -> None:
        import torch
        from transformers import DynamicCache

        device = model.device
        generator = torch.Generator(device=device)
        if params.seed is None:
            generator.seed()
        else:
            generator.manual_seed(params.seed)
        decoder = IncrementalDecoder(self.tokenizer, context=prompt[-_CONTEXT_TOKENS:])
        scanner = StopScanner(params.stop)
        inputs, cache = torch.tensor([prompt], device=device), DynamicCache(config=model.config)
        finish: FinishReason = "length"
        generated, hit = 0, False
        with torch.inference_mode():
            while generated < params.max_tokens:
                if stop.is_set():
                    logger.debug("generation cancelled after %d tokens", generated)
                    return
                out = model(input_ids=inputs, use_cache=True, **{self._cache_arg: cache})  # fills cache
                token = _pick(out.logits[0, -1], params, generator)
                if token in self.eos_ids:
                    finish = "stop"
                    break
                generated += 1
                text, hit = scanner.feed(decoder.push(token))
                if text:
                    emit(GenerationChunk(text))
                if hit:
                    finish = "stop"
                    break
                inputs = torch.tensor([[token]], device=device)
        if not hit:
            text, hit = scanner.feed(decoder.flush())
            text += "" if hit else scanner.flush()
            finish = "stop" if hit else finish
            if text:
                emit(GenerationChunk(text))
        emit(GenerationChunk(finish_reason=finish, prompt_tokens=len(prompt), completion_tokens=generated))


class IncrementalDecoder:
    """Turns token ids into text deltas that never end inside a multi-byte character.

    Each new token is decoded together with the tokens since the last emitted delta; the new text
    is emitted once it no longer ends in U+FFFD (the bytes of a character not yet complete).
    """

    def __init__(self, tokenizer: Any, context: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.ids = list(context)
        self.prefix = 0  # start of the tokens decoded with each new one
        self.read = len(self.ids)  # end of the tokens already emitted

    def push(self, token: int) -> str:
        """Add one token; return the text it completes (often "" mid-character)."""
        self.ids.append(token)
        return self._take(final=False)

    def flush(self) -> str:
        """The text still held back, without an incomplete character at its end."""
        return self._take(final=True)

    def _take(self, *, final: bool) -> str:
        emitted = self._text(self.ids[self.prefix:self.read])
        text = self._text(self.ids[self.prefix:])
        if not final and (len(text) <= len(emitted) or text.endswith("\ufffd")):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(emitted):].rstrip("\ufffd") if final else text[len(emitted):]

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _pick(logits: Any, params: GenerationParams, generator: Any) -> int:
    """Greedy at temperature 0; otherwise sample from the top-p nucleus."""
    import torch

    if params.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p >= 1:
        return int(torch.multinomial(probs, 1, generator=generator))
    probs, order = probs.sort(descending=True)
    probs[probs.cumsum(0) - probs > params.top_p] = 0  # keep the fewest tokens that reach top_p
    return int(order[torch.multinomial(probs, 1, generator=generator)])


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every id that ends a reply: the tokenizer's EOS, the generation config's, and ChatML's."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    vocab = tokenizer.get_vocab()
    ids |= {tokenizer.eos_token_id} | {vocab.get(t) for t in ("<|im_end|>", "<|endoftext|>")}
    return {i for i in ids if i is not None}

