"""A deterministic stand-in for a model, for tests of everything around inference.

It echoes the last user message (or a fixed ``reply``), one character per token, so Hangul is
never split and stop strings can span tokens. It honours ``max_tokens`` and ``stop`` like a real
backend and can be told to be slow (``delay``), to fail after some tokens (``fail_after``), or to
report itself not ready. ``emitted`` and ``running`` let a test see how far a generation got, and
``seen`` what it was asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from changjak.backends.inference.base import FinishReason, GenerationChunk, GenerationParams, StopScanner
from changjak.errors import BackendError


class FakeBackend:
    def __init__(self, model_id: str = "fake", *, reply: str | None = None, delay: float = 0.0,
                 fail_after: int | None = None, is_ready: bool = True) -> None:
        self.model_id = model_id
        self.reply = reply
        self.delay = delay
        self.fail_after = fail_after
        self.is_ready = is_ready
        self.emitted = 0  # tokens produced by the latest generation
        self.seen: list[dict] = []  # the messages of the latest generation, as the model got them
        self.params: GenerationParams | None = None  # and its parameters
        self.running = False
        self.closed = False

    @classmethod
    def load(cls, base_path: Path | None = None, adapter_dir: Path | None = None, *, device: str = "cpu",
             dtype: str = "auto", model_id: str = "fake") -> FakeBackend:
        """Same signature as the real backends; reads nothing."""
        return cls(model_id)

    async def generate(self, messages: list[dict], params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        """Echo the reply one character per token, with the real backends' stop and length rules."""
        text = self.reply if self.reply is not None else _last_user_message(messages)
        scanner = StopScanner(params.stop)
        finish: FinishReason = "stop"
        hit = False
        self.emitted, self.running, self.seen, self.params = 0, True, messages, params
        emitted = 0  # this generation's own count: overlapping requests must not share one
        try:
            for i, token in enumerate(text):
                if i == params.max_tokens:
                    finish = "length"
                    break
                if i == self.fail_after:
                    raise BackendError(f"fake backend failed after {i} tokens")
                await asyncio.sleep(self.delay)
                self.emitted += 1
                emitted += 1
                safe, hit = scanner.feed(token)
                if safe:
                    yield GenerationChunk(safe)
                if hit:
                    break
            if not hit and (tail := scanner.flush()):
                yield GenerationChunk(tail)
            prompt_tokens = sum(len(m["content"]) for m in messages)
            yield GenerationChunk(finish_reason=finish, prompt_tokens=prompt_tokens, completion_tokens=emitted)
        finally:
            self.running = False

    async def ready(self) -> bool:
        """Whether the test said it is ready, and it is not closed."""
        return self.is_ready and not self.closed

    async def aclose(self) -> None:
        """Mark it closed."""
        self.closed = True


def _last_user_message(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
