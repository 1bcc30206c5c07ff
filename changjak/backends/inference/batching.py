"""Continuous batching for the transformers backend: one decode thread owns the model and runs
every admitted request in one batched forward pass per token.

    scheduler = Scheduler(model, tokenizer, eos_ids, max_batch_size=8, max_queue=64)
    scheduler.submit(Sequence(prompt_ids, params, adapter=None, loop=loop, tokenizer=tokenizer))
    ... chunks arrive on sequence.queue; sequence.cancel() drops it before the next step

Between two decode steps the thread drops finished and cancelled sequences, then admits waiting
ones: those of similar prompt length are prefilled together, and their KV cache rows are merged
into the batch's, left-padded to a common length, with a 2-D attention mask marking the padding
and position ids counted per sequence (torch >= 2.5 gives fully masked padding rows zeros, not NaN). A batch mixes greedy and sampled requests (each with its
own seeded generator) and, on a PEFT model, LoRA adapters (PEFT's ``adapter_names``).

The scheduler keeps the KV cache of the last prompt it prefilled. A group whose prompts all start
with at least ``MIN_REUSE`` of those tokens is prefilled from there on: the kept rows are copied
into the group's cache, and the rest of each prompt is left-padded after them (the mask's holes
sit between the kept prefix and the suffix; positions count real tokens only). Every gateway
request starts with the same fenced system prompt, which is then computed once, not per request.
A prefix is kept per adapter: a LoRA changes every layer's keys and values.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

from changjak.backends.inference.base import (
    END,
    DecodeLoop,
    FinishReason,
    GenerationChunk,
    GenerationParams,
    QueuedRequest,
    StopScanner,
    common_prefix,
)
from changjak.backends.inference.decoding import IncrementalDecoder, pick
from changjak.errors import BackendError

logger = logging.getLogger(__name__)
BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch
_CONTEXT_TOKENS = 4  # prompt tokens decoded with the reply, so tokenizers that drop a leading space keep it
MIN_REUSE = 16  # shared prompt tokens worth copying a kept prefix's cache for


class Sequence(QueuedRequest):
    """One request's state: its prompt, the decoding so far, and the queue its chunks go to."""

    def __init__(self, prompt: list[int], params: GenerationParams, *, adapter: str | None,
                 loop: asyncio.AbstractEventLoop, tokenizer: Any) -> None:
        super().__init__(loop)
        self.prompt, self.params, self.adapter = prompt, params, adapter
        self.decoder = IncrementalDecoder(tokenizer, context=prompt[-_CONTEXT_TOKENS:])
        self.scanner = StopScanner(params.stop)
        self.generator: Any = None  # made on the decode thread
        self.generated = 0  # completion tokens so far
        self.length = len(prompt)  # real tokens in the KV cache: the next token's position
        self.next_token = -1  # picked, not yet in the cache


class Scheduler(DecodeLoop):
    engine = "the transformers backend"

    def __init__(self, model: Any, tokenizer: Any, eos_ids: set[int], *, max_batch_size: int = 8,
                 max_queue: int = 64) -> None:
        self.model, self.tokenizer, self.eos_ids = model, tokenizer, eos_ids
        super().__init__(slots=max_batch_size, max_queue=max_queue)
        self.max_batch_size = max_batch_size
        self.peft = hasattr(model, "peft_config")
        base = model.get_base_model() if self.peft else model
        self.config = base.config
        if any(kind != "full_attention" for kind in getattr(self.config, "layer_types", None) or []):
            raise BackendError("the transformers backend batches full-attention models only",
                               hint="serve this model with the llamacpp or vllm backend")
        params = inspect.signature(base.forward).parameters
        # transformers 5.x renamed forward's `past_key_values` to `cache`; accept both spellings
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.keep_logits = "logits_to_keep" in params
        self.device = next(model.parameters()).device
        self.decoded = 0  # tokens picked, over every sequence (cancelled ones too)
        self.batch: list[Sequence] = []  # row i of the cache and mask is batch[i]
        self.admitting = 0  # taken from the queue, not yet in the batch
        self.cache: Any = None
        self.mask: Any = None
        self.kept: tuple[str | None, list[int], list[tuple[Any, Any]]] | None = None  # adapter, prompt, K/V per layer
        self.reused = 0  # prompt tokens served from the kept prefix

    def taken(self) -> int:
        return self.admitting + len(self.batch)

    def _closed_idle(self) -> None:
        self._end_all()

    def _run(self) -> None:
        import torch

        try:
            with torch.inference_mode():
                while True:
                    with self._wake:
                        while not (self.closed or self.waiting or self.batch):
                            self._wake.wait()
                        if self.closed:
                            return
                        room = self.max_batch_size - sum(not (s.done or s.cancelled) for s in self.batch)
                        admitted = [self.waiting.popleft() for _ in range(min(room, len(self.waiting)))]
                        self.admitting = len(admitted)
                    try:
                        for group in _prefill_groups([s for s in admitted if not s.cancelled]):
                            self._admit(group)
                        self.admitting = 0
                        self._step()
                    except Exception as e:  # noqa: BLE001 - every request in the batch hears of it
                        logger.exception("decode step failed")
                        for seq in {id(s): s for s in self.batch + admitted}.values():
                            if not seq.done:
                                seq.emit(e)
                        self.batch, self.cache, self.mask, self.admitting, self.kept = [], None, None, 0, None
        finally:
            with self._wake:
                self._end_all()

    def _end_all(self) -> None:
        for seq in self.batch + list(self.waiting):
            if not seq.done:
                seq.emit(END)
        self.batch, self.cache, self.mask, self.model, self.kept = [], None, None, None, None
        self.waiting.clear()

    def _admit(self, group: list[Sequence]) -> None:
        """Prefill ``group`` in one forward pass (left-padded), pick each one's first token, and
        merge the rows still running into the batch."""
        import torch
        from transformers import DynamicCache

        for seq in [s for s in group if s.params.max_tokens <= 0]:
            self._finish(seq, "length")
        if not (group := [s for s in group if not s.done]):
            return
        for seq in group:
            seq.generator = torch.Generator(device=self.device)
            if seq.params.seed is None:
                seq.generator.seed()
            else:
                seq.generator.manual_seed(seq.params.seed)
        keep = self._reusable(group)
        n = max(len(s.prompt) for s in group) - keep
        pad = self.tokenizer.pad_token_id or 0  # any id: the mask hides it
        ids = torch.tensor([[pad] * (n - len(s.prompt) + keep) + s.prompt[keep:] for s in group], device=self.device)
        mask = torch.tensor([[1] * keep + [0] * (n - len(s.prompt) + keep) + [1] * (len(s.prompt) - keep)
                             for s in group], device=self.device)
        cache = DynamicCache(config=self.config)
        if keep:
            assert self.kept is not None
            for layer, (k, v) in enumerate(self.kept[2]):
                cache.update(k[:, :, :keep].expand(len(group), -1, -1, -1).contiguous(),
                             v[:, :, :keep].expand(len(group), -1, -1, -1).contiguous(), layer)
            self.reused += keep * len(group)
        positions = (mask.cumsum(1) - 1).clamp(min=0)[:, keep:]
        logits = self._hold_eos(self._forward(ids, mask, positions, cache, [s.adapter for s in group]), group)
        self._keep_prefix(group[-1], cache, mask)
        rows = [i for i, s in enumerate(group) if self._advance(s, pick(logits[i], s.params, s.generator))]
        if rows:
            mask = _select(cache, mask, rows, self.device)
            self._merge([group[i] for i in rows], cache, mask)

    def _reusable(self, group: list[Sequence]) -> int:
        """Prompt tokens every sequence of ``group`` shares with the kept prefix (0: below MIN_REUSE),
        leaving each at least its last token to feed."""
        if self.kept is None or any(s.adapter != self.kept[0] for s in group):
            return 0
        kept = self.kept[1]
        shared = min(min(common_prefix(kept, s.prompt), len(s.prompt) - 1) for s in group)
        return shared if shared >= MIN_REUSE else 0

    def _keep_prefix(self, seq: Sequence, cache: Any, mask: Any) -> None:
        """Keep ``seq``'s prompt and its rows of the prefilled ``cache`` (the last row of the group)."""
        columns = mask[-1].nonzero().squeeze(1)  # its real tokens: past the left padding and the holes
        self.kept = (seq.adapter, list(seq.prompt),
                     [(layer.keys[-1:, :, columns].clone(), layer.values[-1:, :, columns].clone())
                      for layer in cache.layers])

    def _step(self) -> None:
        """Drop finished and cancelled sequences, then one batched forward: a token for each."""
        import torch

        self._keep([i for i, s in enumerate(self.batch) if not (s.done or s.cancelled)])
        if not self.batch:
            return
        ids = torch.tensor([[s.next_token] for s in self.batch], device=self.device)
        positions = torch.tensor([[s.length] for s in self.batch], device=self.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.batch), 1)], dim=1)
        logits = self._hold_eos(self._forward(ids, self.mask, positions, self.cache, [s.adapter for s in self.batch]),
                                self.batch)
        greedy = logits.argmax(dim=-1).tolist()
        for i, seq in enumerate(self.batch):
            seq.length += 1
            sampled = seq.params.temperature != 0
            self._advance(seq, pick(logits[i], seq.params, seq.generator) if sampled else greedy[i])

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any, adapters: list[str | None]) -> Any:
        kwargs: dict[str, Any] = {self.cache_arg: cache}
        if self.keep_logits:
            kwargs["logits_to_keep"] = 1  # the last position only: no vocabulary-wide logits per prompt token
        if self.peft:
            kwargs["adapter_names"] = [a or BASE for a in adapters]
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
        return out.logits[:, -1]

    def _hold_eos(self, logits: Any, seqs: list[Sequence]) -> Any:
        """``logits`` with every end-of-sequence id ruled out in the rows still short of their min_tokens."""
        import torch

        rows = [i for i, s in enumerate(seqs) if s.generated < s.params.min_tokens]
        if rows:
            eos = torch.tensor(sorted(self.eos_ids), device=logits.device)
            logits[torch.tensor(rows, device=logits.device)[:, None], eos] = float("-inf")
        return logits

    def _advance(self, seq: Sequence, token: int) -> bool:
        """Take ``token`` for ``seq``: stream its text; False once the sequence has finished."""
        self.decoded += 1
        if token in self.eos_ids:
            self._finish(seq, "stop")
            return False
        seq.generated += 1
        text, hit = seq.scanner.feed(seq.decoder.push(token))
        if text:
            seq.emit(GenerationChunk(text))
        if hit or seq.generated >= seq.params.max_tokens:
            self._finish(seq, "stop" if hit else "length", hit=hit)
            return False
        seq.next_token = token
        return True

    def _finish(self, seq: Sequence, reason: FinishReason, *, hit: bool = False) -> None:
        if not hit:  # the held-back text may still hold a stop string
            text, hit = seq.scanner.feed(seq.decoder.flush())
            text += "" if hit else seq.scanner.flush()
            reason = "stop" if hit else reason
            if text:
                seq.emit(GenerationChunk(text))
        seq.done = True
        seq.emit(GenerationChunk(finish_reason=reason, prompt_tokens=len(seq.prompt),
                                 completion_tokens=seq.generated))

    def _merge(self, seqs: list[Sequence], cache: Any, mask: Any) -> None:
        """Append prefilled rows to the batch's cache and mask, left-padding the shorter side."""
        import torch
        import torch.nn.functional as F

        if not self.batch:
            self.cache, self.mask = cache, mask
        else:
            n = max(self.mask.shape[1], mask.shape[1])
            self.mask = torch.cat([F.pad(m, (n - m.shape[1], 0)) for m in (self.mask, mask)])
            for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
                mine.keys = torch.cat([F.pad(t, (0, 0, n - t.shape[-2], 0)) for t in (mine.keys, theirs.keys)])
                mine.values = torch.cat([F.pad(t, (0, 0, n - t.shape[-2], 0)) for t in (mine.values, theirs.values)])
        self.batch.extend(seqs)

    def _keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` of the batch."""
        if len(rows) == len(self.batch):
            return
        self.batch = [self.batch[i] for i in rows]
        if rows:
            self.mask = _select(self.cache, self.mask, rows, self.device)
        else:
            self.cache = self.mask = None


def _select(cache: Any, mask: Any, rows: list[int], device: Any) -> Any:
    """Keep ``rows`` of ``cache`` (in place) and ``mask``, cutting padding columns no row uses."""
    import torch

    if len(rows) == mask.shape[0]:
        return mask
    index = torch.tensor(rows, device=device)
    start = int(mask[index].any(dim=0).long().argmax())  # the first column some row still uses
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[index, :, start:], layer.values[index, :, start:]
    return mask[index, start:]


def _prefill_groups(seqs: list[Sequence], waste: float = 0.25, slack: int = 32) -> list[list[Sequence]]:
    """Sequences of similar prompt length, to prefill together: padding at most ``waste`` of a
    group's tokens (plus ``slack``), so one long prompt does not make short ones pay for its length."""
    groups: list[list[Sequence]] = []
    for seq in sorted(seqs, key=lambda s: len(s.prompt)):
        group = groups[-1] if groups else None
        real = sum(len(s.prompt) for s in group or ()) + len(seq.prompt)
        if group is not None and len(seq.prompt) * (len(group) + 1) <= real * (1 + waste) + slack:
            group.append(seq)
        else:
            groups.append([seq])
    return groups
