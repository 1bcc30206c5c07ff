"""Times an inference backend at its boundary, so no route has to: ``MeteredBackend(inner, metrics)``.

    served = ServedModel(MeteredBackend(backend, metrics, model_version="3"), "3", loaded_at)

For every generation it measures the time to the first text (queueing behind other generations
included; for a whole answer from an upstream, ``params.whole``, that is the whole answer's
time), the gaps between later pieces of text, and how many generations are waiting for their
first text or producing now. When the last chunk brings the token counts it writes them, and the
model version, into the current request's context (see :mod:`changjak.serve.logging`), where the
metrics middleware and the audit record read them. Closing the reply's iterator closes the inner
one: a client that hangs up still frees its generation.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from changjak.backends.inference.base import GenerationChunk, GenerationParams, InferenceBackend
from changjak.monitor.metrics import UNKNOWN, Metrics
from changjak.serve import logging as request_logs


class MeteredBackend:
    def __init__(self, inner: InferenceBackend, metrics: Metrics, *, model_version: str | None = None) -> None:
        self.inner = inner
        self.metrics = metrics
        self.model_version = model_version
        self.model_id = inner.model_id
        self.last_generated = float("-inf")  # monotonic time a generation last finished (for /readyz)

    def __getattr__(self, name: str) -> Any:  # anything else a backend offers (adapters, ...)
        return getattr(self.inner, name)

    async def generate(self, messages: list[dict], params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        """The inner backend's reply, chunk for chunk, timed."""
        m, version = self.metrics, self.model_version or UNKNOWN
        ctx = request_logs.current.get()
        asked = previous = time.perf_counter()
        first = True
        m.queued.inc()
        try:
            async with aclosing(self.inner.generate(messages, params)) as chunks:
                async for chunk in chunks:
                    now = time.perf_counter()
                    if first and (chunk.text or chunk.finish_reason):
                        first = False
                        m.queued.dec()
                        m.running.inc()
                        m.child(m.ttft, version).observe(now - asked)
                    elif chunk.text:
                        m.child(m.itl, version).observe(now - previous)
                    if chunk.text:
                        previous = now
                    if chunk.finish_reason is not None:
                        self.last_generated = time.monotonic()
                    if chunk.finish_reason is not None and ctx is not None:
                        ctx.prompt_tokens, ctx.completion_tokens = chunk.prompt_tokens, chunk.completion_tokens
                        ctx.model_version = ctx.model_version or self.model_version
                    yield chunk
        finally:
            (m.queued if first else m.running).dec()

    async def ready(self) -> bool:
        return await self.inner.ready()

    async def aclose(self) -> None:
        await self.inner.aclose()
