"""The vLLM backend: the production engine on CUDA GPUs, run in-process, with one LoRA per request.

    pip install 'changjak[vllm]'
    CHANGJAK_SERVE__BACKEND=vllm changjak serve

vLLM's ``AsyncLLM`` batches every running request continuously; this adapter only turns our chat
messages into a prompt (the tokenizer's chat template, control tokens typed by users kept as
text), our :class:`GenerationParams` into ``SamplingParams``, and its ``RequestOutput`` stream
into :class:`GenerationChunk` deltas. Closing the reply's iterator aborts the request in the
engine. Adapters are LoRA requests: the version's adapter is served by default, others are added
at runtime with :meth:`VllmBackend.add_adapter` (say after ``changjak promote``), no restart.

The other way to use vLLM, its own OpenAI server fronted by the gateway, is the ``openai``
upstream backend (see docs/inference.md).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from changjak.backends.inference.base import FinishReason, GenerationChunk, GenerationParams
from changjak.errors import BackendError, BadRequest, ChangjakError

if TYPE_CHECKING:
    from changjak.settings import VllmSettings

logger = logging.getLogger(__name__)
LORA_RANKS = (8, 16, 32, 64, 128, 256, 512)  # the max_lora_rank values vLLM accepts
_DTYPES = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_END_TOKENS = ("<|im_end|>", "<|endoftext|>")  # ChatML's, in case the model's generation config lacks them


class VllmBackend:
    def __init__(self, engine: Any, tokenizer: Any, *, model_id: str, sampling_params: Callable[..., Any],
                 lora_request: Callable[[str, int, str], Any], output_kind: Any = None) -> None:
        """``engine`` is an ``AsyncLLM`` (or anything with its ``generate``/``abort``); ``output_kind``
        is ``RequestOutputKind.DELTA``, or None for an engine that streams cumulative outputs."""
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.adapters = AdapterTable(lora_request)
        self.default_adapter: str | None = None
        self._sampling_params = sampling_params
        self._output_kind = output_kind
        vocab = tokenizer.get_vocab()
        self._stop_token_ids = sorted({vocab[t] for t in _END_TOKENS if t in vocab})
        self._closed = False

    @classmethod
    def load(cls, base_path: Path, adapter_dir: Path | None = None, *, device: str = "cuda", dtype: str = "auto",
             model_id: str, adapters: Mapping[str, Path] | None = None, options: VllmSettings | None = None,
             **engine_args: Any) -> VllmBackend:
        """Start the engine on the base model: the adapter in ``adapter_dir`` is the default one (named
        ``model_id``), ``adapters`` are more by name; ``engine_args`` go to ``AsyncEngineArgs``."""
        if device not in ("auto", "cuda"):
            raise BackendError(f"the vllm backend runs on CUDA GPUs, not on {device!r}",
                               hint="use --backend llamacpp or --backend transformers on this machine")
        opts = options or _options()
        named = {**({model_id: Path(adapter_dir)} if adapter_dir is not None else {}), **(adapters or {})}
        rank = lora_rank(max([opts.max_lora_rank, *(adapter_rank(p) for p in named.values())]))
        if named and opts.max_loras == 0:
            raise BackendError("serve.vllm.max_loras is 0 (LoRA off) but this version has a LoRA adapter",
                               hint="set CHANGJAK_SERVE__VLLM__MAX_LORAS to 1 or more")
        try:
            from vllm import AsyncEngineArgs, SamplingParams
            from vllm.lora.request import LoRARequest
            from vllm.sampling_params import RequestOutputKind
        except ImportError as e:
            raise BackendError("the vllm backend needs the vllm package", hint="pip install 'changjak[vllm]'") from e
        from changjak.base_model import load_tokenizer

        args = AsyncEngineArgs(model=str(base_path), served_model_name=model_id, dtype=_DTYPES.get(dtype, dtype),
                               gpu_memory_utilization=opts.gpu_memory_utilization, max_model_len=opts.max_model_len,
                               enable_lora=opts.max_loras > 0, max_loras=max(opts.max_loras, 1), max_lora_rank=rank,
                               disable_log_stats=True, **engine_args)
        engine = _engine_class().from_engine_args(args)
        backend = cls(engine, load_tokenizer(Path(base_path)), model_id=model_id, sampling_params=SamplingParams,
                      lora_request=LoRARequest, output_kind=RequestOutputKind.DELTA)
        for name, path in named.items():  # vLLM reads each with the first request that names it
            backend.adapters.add(name, path)
        backend.default_adapter = model_id if adapter_dir is not None else None
        logger.info("vLLM engine on %s (adapters: %s, max LoRA rank %d)", base_path, sorted(named) or "none", rank)
        return backend

    async def add_adapter(self, name: str, path: Path | str, *, default: bool = False) -> None:
        """Load a LoRA adapter now, for requests that name it (or all, with ``default``)."""
        previous = self.adapters.entry(name)
        request = self.adapters.add(name, path)
        if hasattr(self.engine, "add_lora"):
            try:
                await self.engine.add_lora(request)
            except Exception as e:  # a rank above max_lora_rank, a base-model mismatch, a missing file
                self.adapters.restore(name, previous)  # the name keeps serving what it served
                raise BackendError(f"vLLM cannot load the LoRA adapter {name!r} from {path}: {e}",
                                   hint="check the adapter's rank against serve.vllm.max_lora_rank") from e
        if default:
            self.set_default_adapter(name)

    def set_default_adapter(self, name: str | None) -> None:
        """The adapter for requests that name none (None: the bare base model)."""
        if name is not None:
            self.adapters.get(name)  # BackendError before anything changes
        self.default_adapter = name

    async def generate(self, messages: list[dict], params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        """Stream the reply as vLLM decodes it; closing this iterator aborts the request in the engine."""
        if self._closed:
            raise BackendError("the vllm backend is closed")
        prompt = encode_chat(self.tokenizer, messages)
        name = params.adapter or self.default_adapter
        lora = self.adapters.get(name) if name else None
        extra = {"output_kind": self._output_kind} if self._output_kind is not None else {}
        sampling = self._sampling_params(**sampling_kwargs(params, self._stop_token_ids), **extra)
        request_id = f"changjak-{uuid.uuid4().hex}"
        stream = self.engine.generate({"prompt_token_ids": prompt}, sampling, request_id, lora_request=lora)
        reader = OutputReader(delta=self._output_kind is not None, prompt_tokens=len(prompt))
        finished = False
        try:
            async for output in stream:
                chunk = reader.read(output)
                if chunk.text:
                    yield GenerationChunk(chunk.text)
                if chunk.finish_reason is not None:
                    finished = True
                    yield GenerationChunk(finish_reason=chunk.finish_reason, prompt_tokens=chunk.prompt_tokens,
                                          completion_tokens=chunk.completion_tokens)
                    return
        except ValueError as e:  # vLLM validates requests with ValueError (a prompt over max_model_len ...)
            raise BadRequest(str(e)) from e
        except ChangjakError:
            raise
        except Exception as e:
            raise BackendError(f"vLLM generation failed: {e.__class__.__name__}: {e}") from e
        finally:
            await stream.aclose()  # vLLM's own generator aborts on close too (newer versions)
            if not finished:
                await self.engine.abort(request_id)

    async def ready(self) -> bool:
        """Not closed, and the engine's background loop is alive."""
        return not self._closed and not getattr(self.engine, "errored", False)

    async def aclose(self) -> None:
        """Shut the engine down (its worker processes and GPU memory)."""
        self._closed = True
        if (shutdown := getattr(self.engine, "shutdown", None)) is not None:
            shutdown()


@dataclass
class _Adapter:
    int_id: int
    path: str
    request: Any


class AdapterTable:
    """Adapter names → vLLM ``LoRARequest``s, with ids that never change for a name and path.

    vLLM caches adapters by integer id, so a name re-pointed at another directory (a new version
    promoted) gets a new id; ids are never reused, and requests already running keep theirs.
    """

    def __init__(self, lora_request: Callable[[str, int, str], Any]) -> None:
        self._make = lora_request
        self._by_name: dict[str, _Adapter] = {}
        self._next_id = 1  # vLLM wants ids > 0

    def add(self, name: str, path: Path | str) -> Any:
        path = str(Path(path).resolve())
        current = self._by_name.get(name)
        if current is not None and current.path == path:
            return current.request
        self._by_name[name] = _Adapter(self._next_id, path, self._make(name, self._next_id, path))
        self._next_id += 1
        return self._by_name[name].request

    def get(self, name: str) -> Any:
        if name not in self._by_name:
            known = ", ".join(sorted(self._by_name)) or "none"
            raise BackendError(f"no adapter named {name!r} is loaded (loaded: {known})",
                               hint="add it with add_adapter() first, or name a loaded one")
        return self._by_name[name].request

    def entry(self, name: str) -> _Adapter | None:
        return self._by_name.get(name)

    def restore(self, name: str, entry: _Adapter | None) -> None:
        """Put back what ``entry`` said (None: no adapter of that name)."""
        if entry is None:
            self._by_name.pop(name, None)
        else:
            self._by_name[name] = entry

    def names(self) -> list[str]:
        return sorted(self._by_name)


class OutputReader:
    """Turns vLLM ``RequestOutput``s (delta or cumulative) into text deltas and the final counts."""

    def __init__(self, *, delta: bool, prompt_tokens: int) -> None:
        self.delta = delta
        self.prompt_tokens = prompt_tokens
        self.text_seen = 0  # characters already returned (cumulative outputs)
        self.tokens = 0

    def read(self, output: Any) -> GenerationChunk:
        """The new text; on the last output also the finish reason and token counts."""
        completion = output.outputs[0]
        if self.delta:
            text, self.tokens = completion.text, self.tokens + len(completion.token_ids)
        else:
            text, self.tokens = completion.text[self.text_seen:], len(completion.token_ids)
            self.text_seen = len(completion.text)
        if not output.finished:
            return GenerationChunk(text)
        prompt_tokens = len(output.prompt_token_ids) if output.prompt_token_ids else self.prompt_tokens
        return GenerationChunk(text, finish_reason(completion.finish_reason), prompt_tokens, self.tokens)


def finish_reason(reason: str | None) -> FinishReason:
    """vLLM's finish reason as ours; an abort or error we did not ask for is a backend failure."""
    if reason == "length":
        return "length"
    if reason in ("stop", "repetition", None):  # repetition: vLLM's loop detector stopped it
        return "stop"
    raise BackendError(f"vLLM ended the request: {reason}", hint="see the vLLM engine log; retry the request")


def sampling_kwargs(params: GenerationParams, stop_token_ids: Sequence[int] = ()) -> dict[str, Any]:
    """``SamplingParams`` keyword arguments for ``params`` (temperature 0 is greedy in vLLM too)."""
    greedy = params.temperature == 0
    kwargs: dict[str, Any] = {"max_tokens": params.max_tokens, "temperature": float(params.temperature),
                              "top_p": 1.0 if greedy else float(params.top_p), "stop": list(params.stop),
                              "stop_token_ids": list(stop_token_ids), "include_stop_str_in_output": False,
                              "skip_special_tokens": True}
    if params.min_tokens:
        kwargs["min_tokens"] = params.min_tokens
    if params.seed is not None:
        kwargs["seed"] = params.seed
    return kwargs


def encode_chat(tokenizer: Any, messages: list[dict]) -> list[int]:
    """The prompt's token ids: the chat template with the assistant's turn opened, and control
    tokens typed in a message kept as text, so nobody can open a system turn from a message."""
    import inspect

    if "sanitize_control_tokens" in inspect.signature(tokenizer.apply_chat_template).parameters:
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                sanitize_control_tokens=True, return_dict=True)
        return list(encoded["input_ids"])
    # Older transformers: render with markers in place of contents, encode the contents apart.
    marks = [f"\ue000{i}\ue001" for i in range(len(messages))]
    rendered = tokenizer.apply_chat_template([{**m, "content": k} for m, k in zip(messages, marks, strict=True)],
                                             add_generation_prompt=True, tokenize=False)
    ids: list[int] = []
    for message, mark in zip(messages, marks, strict=True):
        head, _, rendered = rendered.partition(mark)
        ids += tokenizer(head, add_special_tokens=False)["input_ids"]
        ids += tokenizer(message["content"], add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return ids + tokenizer(rendered, add_special_tokens=False)["input_ids"]


def adapter_rank(adapter_dir: Path) -> int:
    """The LoRA rank in a PEFT adapter directory (``r`` in adapter_config.json)."""
    try:
        return int(json.loads((Path(adapter_dir) / "adapter_config.json").read_text())["r"])
    except (OSError, KeyError, ValueError) as e:
        raise BackendError(f"no readable adapter_config.json in {adapter_dir}: {e}",
                           hint="point the model version at a PEFT LoRA adapter directory") from e


def lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts for ``max_lora_rank`` that fits ``rank``."""
    for allowed in LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise BackendError(f"LoRA rank {rank} is above vLLM's largest ({LORA_RANKS[-1]})")


def _options() -> VllmSettings:
    from changjak.settings import get_settings

    return get_settings().serve.vllm


def _engine_class() -> Any:
    """vLLM's asynchronous engine: the V1 ``AsyncLLM``, or ``AsyncLLMEngine`` before it existed."""
    try:
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError:
        from vllm import AsyncLLMEngine as AsyncLLM
    return AsyncLLM
