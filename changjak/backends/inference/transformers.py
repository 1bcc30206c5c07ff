"""The transformers backend: a base model (CPU, MPS or CUDA) whose concurrent requests share one
batched forward pass per token, with LoRA adapters picked per request.

    changjak serve --backend transformers      # serve.max_batch_size, serve.max_queue, serve.quantization

``load(base, adapter_dir)`` merges the one adapter into the base (fastest). With ``adapters={name:
dir}`` the base stays unmerged and every adapter is loaded onto it by name, so the champion and a
challenger share one model in memory; ``GenerationParams.adapter`` picks one per request (None:
the ``adapter_dir`` one, loaded as "default", or the bare base). Scheduling, stop strings and
cancellation are in :mod:`.batching`. ``quantization="int8"`` is torch's dynamic INT8 on the CPU
(nn.Linear weights; activations stay fp32) or bitsandbytes 8-bit on CUDA; ``"nf4"`` is CUDA only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from changjak.backends.inference.base import GenerationChunk, GenerationParams
from changjak.backends.inference.batching import Scheduler, Sequence
from changjak.backends.inference.decoding import IncrementalDecoder
from changjak.errors import BackendError

__all__ = ["IncrementalDecoder", "TransformersBackend"]
logger = logging.getLogger(__name__)
QUANTIZATIONS = ("none", "int8", "nf4")


class TransformersBackend:
    def __init__(self, model: Any, tokenizer: Any, *, model_id: str, adapters: tuple[str, ...] = (),
                 default_adapter: str | None = None, max_batch_size: int = 8, max_queue: int = 64) -> None:
        if tokenizer.chat_template is None:
            raise BackendError(f"the tokenizer of {model_id} has no chat template",
                               hint="serve an instruction-tuned (chat) base model")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.adapters = adapters  # names loaded on a PEFT model, for GenerationParams.adapter
        self.default_adapter = default_adapter
        self.eos_ids = _eos_ids(model, tokenizer)
        self.scheduler = Scheduler(self.model, tokenizer, self.eos_ids, max_batch_size=max_batch_size,
                                   max_queue=max_queue)
        self._closed = False

    @classmethod
    def load(cls, base_path: Path, adapter_dir: Path | None = None, *, device: str = "auto",
             dtype: str = "auto", model_id: str, adapters: Mapping[str, Path] | None = None,
             quantization: str = "none", max_batch_size: int = 8, max_queue: int = 64,
             prepack: bool = True) -> TransformersBackend:
        """Load the base model and tokenizer, then the LoRA adapter(s), then quantise if asked.

        ``prepack``: a bf16 model on the CPU gets its Linear weights reordered for oneDNN once
        (:mod:`.onednn`), not on every matmul.
        """
        from changjak.base_model import load_causal_lm, load_tokenizer
        from changjak.train.device import pick_device, pick_dtype

        quantization = "int8" if dtype == "int8" else quantization or "none"
        if quantization not in QUANTIZATIONS:
            raise BackendError(f"unknown quantization {quantization!r}", hint="use none, int8 or nf4")
        device = pick_device(device)
        if (quantization == "nf4" and device != "cuda") or (quantization == "int8" and device not in ("cpu", "cuda")):
            raise BackendError(f"{quantization} quantization is not available on {device}",
                               hint="use quantization int8 on the CPU, or int8/nf4 on a CUDA GPU")

        def build() -> tuple[Any, tuple[str, ...], str | None]:
            if quantization != "none" and device == "cuda":
                model = _load_bitsandbytes(Path(base_path), quantization, pick_dtype(device, "auto"))
            else:  # dynamic INT8 takes fp32 activations
                model = load_causal_lm(Path(base_path), device=device,
                                       dtype=pick_dtype(device, "fp32" if quantization == "int8" else dtype))
            model, names, default = _with_adapters(model, adapter_dir, dict(adapters or {}),
                                                   merge=quantization == "none" or device == "cpu")  # not into bnb
            if quantization == "int8" and device == "cpu":
                model = quantize_int8(model)
            elif prepack and device == "cpu":
                from changjak.backends.inference import onednn

                onednn.pack(model, hint=max_batch_size)
            return model, names, default

        model, names, default = on_a_thread_of_its_own(build)
        logger.info("loaded %s from %s (adapters: %s, quantization: %s) on %s", model_id, base_path,
                    names or adapter_dir, quantization, device)
        return cls(model, load_tokenizer(Path(base_path)), model_id=model_id,
                   adapters=names, default_adapter=default, max_batch_size=max_batch_size, max_queue=max_queue)

    async def generate(self, messages: list[dict], params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        """Stream the reply as the decode thread makes it; closing this iterator drops the request."""
        if self._closed:
            raise BackendError("the transformers backend is closed")
        if params.adapter is not None and params.adapter not in self.adapters:
            raise BackendError(f"no LoRA adapter named {params.adapter!r} is loaded",
                               hint=f"loaded: {', '.join(self.adapters) or 'none'}")
        seq = Sequence(self.encode(messages), params, adapter=params.adapter or self.default_adapter,
                       loop=asyncio.get_running_loop(), tokenizer=self.tokenizer)
        self.scheduler.submit(seq)
        async with contextlib.aclosing(seq.chunks()) as chunks:  # closed with this one: cancels
            async for chunk in chunks:
                yield chunk

    async def ready(self) -> bool:
        """Loaded and not closed (no probe generation: that would queue behind real requests)."""
        return not self._closed

    async def aclose(self) -> None:
        """Stop generating (the decode thread ends after its running step) and drop the model.

        It does not wait for that thread: at shutdown the loop that would hear of its end may be gone.
        """
        self._closed = True
        self.scheduler.close()
        self.model = None

    def encode(self, messages: list[dict]) -> list[int]:
        """The prompt's token ids: the chat template with the assistant's turn opened."""
        # Special tokens typed by a user stay text, so nobody can open a system turn from a message.
        encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                     sanitize_control_tokens=True, return_dict=True)
        return list(encoded["input_ids"])


# Kept in fp32: the MLP's down projection takes the outlier activations that per-tensor dynamic
# INT8 rounds worst. Demo model, perplexity on Korean text: fp32 3.315, all Linear int8 3.945,
# all but down_proj 3.341 (benchmarks/transformers_quant.py has the speed side).
INT8_SKIP = ("down_proj", "lora_")


def quantize_int8(model: Any, skip: tuple[str, ...] = INT8_SKIP) -> Any:
    """Dynamic INT8 for every nn.Linear whose name has none of ``skip`` (LoRA matrices stay exact)."""
    import torch
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    spec = {name: default_dynamic_qconfig for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not any(part in name for part in skip)}
    with warnings.catch_warnings():  # torch deprecates the API (for torchao, which needs its own torch build)
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, spec, dtype=torch.qint8)


def on_a_thread_of_its_own(fn: Callable[[], Any]) -> Any:
    """``fn()`` on a thread that ends when it returns, so that the OpenMP workers torch starts for it end too.

    GNU OpenMP (torch's) spins only briefly between parallel regions once it manages more threads
    than there are cores; then every one of the hundreds of regions in a decode step waits for a
    worker to wake. The decode thread is not the main thread, so workers the main thread had started
    for loading would stay and count: a decode step of 8 sequences took 175 ms instead of 95 on
    2 cores. Loaded here, the decode thread's own workers are the only ones.
    """
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="changjak-load") as pool:
        return pool.submit(fn).result()


def _load_bitsandbytes(path: Path, quantization: str, compute_dtype: Any) -> Any:
    """8-bit or NF4 weights on CUDA through bitsandbytes (not installed on CPU machines)."""
    try:
        import bitsandbytes  # noqa: F401
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    except ImportError as e:
        raise BackendError(f"{quantization} on CUDA needs bitsandbytes", hint="pip install bitsandbytes") from e
    config = (BitsAndBytesConfig(load_in_8bit=True) if quantization == "int8" else
              BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype))
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=config, dtype=compute_dtype,
                                                device_map={"": 0})


def _with_adapters(model: Any, adapter_dir: Path | None, adapters: dict[str, Path], *,
                   merge: bool) -> tuple[Any, tuple[str, ...], str | None]:
    """The model with its adapters, the names a request may pick, and the default adapter's name."""
    if adapter_dir is None and not adapters:
        return model, (), None
    from peft import PeftModel

    named = ({"default": Path(adapter_dir)} if adapter_dir is not None else {}) | adapters
    path = next(iter(named.values()))
    try:
        if merge and adapter_dir is not None and not adapters:
            return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload(), (), None
        (first, path), *rest = named.items()
        model = PeftModel.from_pretrained(model, str(path), adapter_name=first)
        for name, path in rest:
            model.load_adapter(str(path), adapter_name=name)
    except (OSError, ValueError) as e:
        raise BackendError(f"cannot load the LoRA adapter in {path}: {e}",
                           hint="check that the registered version's adapter matches its base model") from e
    return model, tuple(named), "default" if adapter_dir is not None else None


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every id that ends a reply: the tokenizer's EOS, the generation config's, and ChatML's."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    vocab = tokenizer.get_vocab()
    ids |= {tokenizer.eos_token_id} | {vocab.get(t) for t in ("<|im_end|>", "<|endoftext|>")}
    return {i for i in ids if i is not None}
