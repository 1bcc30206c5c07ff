"""Continuous batching for the llama.cpp backend: one context holds up to ``slots`` sequences in
its KV cache (llama.cpp's multi-sequence cache), and one decode thread advances all of them with
one ``llama_decode`` per step.

    batcher = Batcher(llm, slots=8, n_ctx_seq=4096, max_queue=64)
    batcher.submit(Request(prompt_ids, params, loop=loop, detokenize=...))
    ... chunks arrive on request.queue; request.cancel() drops it before the next step

A step holds the next token of every running sequence, then prompt chunks of the sequences being
admitted, first come first served, up to the context's ``n_batch`` tokens (chunked prefill): a long
prompt is spread over several steps instead of stalling every stream for its whole prefill. On a
CPU a decode step is bound by reading the weights, so eight sequences cost little more than one.
Each sequence samples from its own row of logits with its own llama.cpp sampler chain (greedy, or
temperature, top-p and a seeded draw), so batch neighbours never change a seeded reply's draws.

A slot keeps its last prompt's KV cells when its request ends; a new request takes the free slot
whose kept prompt shares the longest prefix with its own and prefills only the rest. Every
gateway request starts with the same fenced system prompt (hundreds of tokens), so when another
sequence, running or free, holds a longer shared prefix than the slot taken, its KV cells are
copied over (``llama_memory_seq_cp``) instead: that prefix is computed once per context, not once
per slot or per request, and eight requests arriving together prefill only their own parts.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
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
from changjak.errors import BackendError

logger = logging.getLogger(__name__)
COPY_MIN = 32  # prompt tokens another sequence must share beyond the slot's own before its KV is copied


class Request(QueuedRequest):
    """One request's state: prompt, position in the KV cache, sampler, and the queue its chunks go to."""

    def __init__(self, prompt: list[int], params: GenerationParams, *, loop: asyncio.AbstractEventLoop,
                 text: Any) -> None:
        super().__init__(loop)
        self.prompt, self.params = prompt, params
        self.text = text  # turns token bytes into text that never ends inside a character
        self.scanner = StopScanner(params.stop)
        self.seq_id = -1
        self.sampler: Any = None
        self.fed = 0  # prompt tokens in the KV cache so far
        self.generated = 0
        self.next_token = -1  # sampled, not yet in the cache
        self.budget = params.max_tokens


class Batcher(DecodeLoop):
    engine = "the llama.cpp backend"
    thread_name = "changjak-llamacpp"

    def __init__(self, llm: Any, *, slots: int, n_ctx_seq: int, max_queue: int,
                 piece: Callable[[int], bytes]) -> None:
        import llama_cpp

        self.llm, self.lib = llm, llama_cpp
        self.ctx, self.vocab = llm._ctx.ctx, llm._model.vocab
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        super().__init__(slots=slots, max_queue=max_queue)
        self.n_ctx_seq = n_ctx_seq
        self.n_batch = llama_cpp.llama_n_batch(self.ctx)
        self.piece = piece
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.free: dict[int, list[int]] = {i: [] for i in range(slots)}  # slot -> prompt tokens its KV holds
        self.reused = 0  # prompt tokens served from a slot's kept prefix
        self.copied = 0  # prefixes copied from another sequence's KV
        self.running: list[Request] = []  # in admission order: prefill goes first come first served
        self.decoded = 0  # tokens sampled, over every request
        self.steps = 0  # llama_decode calls
        # a bias of -inf per end-of-generation id, for min_tokens: found here (~50 ms for a 151k vocabulary),
        # not on the decode thread at the first request that asks, where every sequence in flight would wait
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        eog = [t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t)]
        self.no_eog = (llama_cpp.llama_logit_bias * len(eog))(*[(t, float("-inf")) for t in eog])
        llama_cpp.llama_memory_clear(self.memory, True)

    def taken(self) -> int:
        return len(self.running)

    def _closed_idle(self) -> None:
        self._free()

    def _run(self) -> None:
        try:
            while True:
                with self._wake:
                    while not (self.closed or self.waiting or self.running):
                        self._wake.wait()
                    if self.closed:
                        return
                    while self.waiting and self.free:
                        self._admit(self.waiting.popleft())
                try:
                    self._step()
                except Exception as e:  # noqa: BLE001 - every running request hears of it
                    logger.exception("llama.cpp decode step failed")
                    for request in list(self.running):
                        request.emit(e)
                        self._release(request, failed=True)
        finally:
            with self._wake:
                for request in self.running + list(self.waiting):
                    if not request.done:
                        request.emit(END)
                self.running.clear()
                self.waiting.clear()
                self._free()

    def _free(self) -> None:
        if self.batch is not None:
            self.lib.llama_batch_free(self.batch)
            self.batch = None

    def _admit(self, request: Request) -> None:
        if request.cancelled:
            return
        if request.params.max_tokens <= 0:
            request.done = True
            request.emit(GenerationChunk(finish_reason="length", prompt_tokens=len(request.prompt), completion_tokens=0))
            return
        lib, p = self.lib, request.params
        request.seq_id, keep = self._slot_for(request.prompt)
        lib.llama_memory_seq_rm(self.memory, request.seq_id, keep, -1)
        request.fed = keep
        self.reused += keep
        request.budget = min(p.max_tokens, self.n_ctx_seq - len(request.prompt))
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if p.min_tokens > 0:  # first in the chain, taken out once min_tokens are out (see _advance)
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_logit_bias(self.n_vocab, len(self.no_eog),
                                                                                  self.no_eog))
        if p.temperature == 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        else:  # as the other backends: temperature first, then the top-p nucleus of that distribution
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(p.temperature))
            if p.top_p < 1:
                lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(p.top_p, 1))
            seed = p.seed if p.seed is not None else random.getrandbits(31)
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        request.sampler = chain
        self.running.append(request)

    def _slot_for(self, prompt: list[int]) -> tuple[int, int]:
        """A free slot for ``prompt`` and how many of its leading tokens that slot's KV holds.

        The free slot whose kept prompt shares the longest prefix is taken. When another sequence,
        free or running, shares at least ``COPY_MIN`` more (the fenced system prompt every request
        starts with, say), its KV is copied into the free slot that keeps the least, so only the rest
        is prefilled: a copy of one sequence's cells costs milliseconds, a prefill of 200 tokens a
        second or more on a CPU. Never the whole prompt: its last token must be fed for logits.
        """
        limit = len(prompt) - 1
        own = {i: common_prefix(kept, prompt) for i, kept in self.free.items()}
        slot = max(own, key=own.__getitem__)
        keep = own[slot]
        sources = [(n, i) for i, n in own.items()]
        sources += [(common_prefix(r.prompt[:r.fed], prompt), r.seq_id) for r in self.running]
        best, source = max(sources)
        if min(best, limit) - min(keep, limit) >= COPY_MIN:
            slot = min((i for i in own if i != source), key=lambda i: len(self.free[i]))
            self.lib.llama_memory_seq_cp(self.memory, source, slot, -1, -1)  # whole stream, applied before the next decode
            self.copied += 1
            keep = best
        del self.free[slot]
        return slot, min(keep, limit)

    def _step(self) -> None:
        """Drop cancelled requests, then one llama_decode: a token for each running sequence and
        prompt chunks of the admitted ones, up to n_batch tokens; then sample each finished row."""
        for request in [r for r in self.running if r.cancelled]:
            self._release(request)
        if not self.running:
            return
        batch, n, rows = self.batch, 0, []
        for request in self.running:
            if request.fed == len(request.prompt):  # decoding
                n = self._put(n, request.next_token, len(request.prompt) + request.generated - 1, request, True)
                rows.append((n - 1, request))
        for request in self.running:
            if n >= self.n_batch:
                break
            if (left := len(request.prompt) - request.fed) == 0:
                continue
            take = min(left, self.n_batch - n)
            for k in range(request.fed, request.fed + take):
                n = self._put(n, request.prompt[k], k, request, k == len(request.prompt) - 1)
            request.fed += take
            if request.fed == len(request.prompt):
                rows.append((n - 1, request))
        batch.n_tokens = n
        if (code := self.lib.llama_decode(self.ctx, batch)) != 0:
            raise BackendError(f"llama_decode returned {code}")
        self.steps += 1
        for row, request in rows:
            token = self.lib.llama_sampler_sample(request.sampler, self.ctx, row)
            self.decoded += 1
            if not request.cancelled:
                self._advance(request, token)

    def _put(self, n: int, token: int, pos: int, request: Request, logits: bool) -> int:
        batch = self.batch
        batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, pos, 1
        batch.seq_id[n][0] = request.seq_id
        batch.logits[n] = logits
        return n + 1

    def _advance(self, request: Request, token: int) -> None:
        if self.lib.llama_vocab_is_eog(self.vocab, token):
            return self._finish(request, "stop")
        request.generated += 1
        if request.generated == request.params.min_tokens:  # from now on the end of sequence may come
            self.lib.llama_sampler_free(self.lib.llama_sampler_chain_remove(request.sampler, 0))
        safe, hit = request.scanner.feed(request.text.add(self.piece(token)))
        if safe:
            request.emit(GenerationChunk(safe))
        if hit:
            return self._finish(request, "stop", hit=True)
        if request.generated >= request.budget:
            return self._finish(request, "length")
        request.next_token = token
        return None

    def _finish(self, request: Request, reason: FinishReason, *, hit: bool = False) -> None:
        if not hit:  # the held-back text may still hold a stop string
            safe, hit = request.scanner.feed(request.text.end())
            reason = "stop" if hit else reason
            if tail := safe + ("" if hit else request.scanner.flush()):
                request.emit(GenerationChunk(tail))
        request.done = True
        request.emit(GenerationChunk(finish_reason=reason, prompt_tokens=len(request.prompt),
                                     completion_tokens=request.generated))
        self._release(request)

    def _release(self, request: Request, *, failed: bool = False) -> None:
        """Free ``request``'s slot, keeping the KV cells of its prompt (what was fed of it) for the
        next request that starts the same way; its reply's cells go. After a failed step nothing is kept."""
        if request in self.running:
            self.running.remove(request)
        if request.seq_id >= 0:
            kept = 0 if failed else request.fed
            self.lib.llama_memory_seq_rm(self.memory, request.seq_id, kept, -1)
            self.free[request.seq_id] = request.prompt[:kept]
            request.seq_id = -1
        if request.sampler is not None:
            self.lib.llama_sampler_free(request.sampler)
            request.sampler = None
