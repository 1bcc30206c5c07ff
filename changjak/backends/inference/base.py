"""What the server needs from an inference engine: one Protocol, its two dataclasses, and the
stop-string scanner and request plumbing shared by the backends that decode text themselves.

A backend streams a reply as text deltas and ends with one chunk that carries ``finish_reason``
and the token counts::

    GenerationChunk("안녕"), GenerationChunk("하세요"), GenerationChunk("", "stop", 12, 3)

Backends are built by name (see ``changjak.backends.inference.create``) through a classmethod
``load(base_path, adapter_dir=None, *, device, dtype, model_id)``.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 256
    # no end-of-sequence token is picked before this many completion tokens (vLLM's min_tokens);
    # a stop string still ends the reply, and max_tokens still wins over it
    min_tokens: int = 0
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)  # never part of the returned text
    seed: int | None = None  # same seed, same sampled reply (on the same backend and device)
    adapter: str | None = None  # a LoRA adapter the backend loaded by this name; None: its default
    # the caller uses the reply only once it is complete (a non-streamed answer): a backend may then
    # send it in one piece (the openai upstream: one non-streamed request instead of an event stream)
    whole: bool = False


@dataclass(frozen=True)
class GenerationChunk:
    text: str = ""
    finish_reason: FinishReason | None = None  # set on the last chunk only
    prompt_tokens: int = 0  # the counts are set on the last chunk only
    completion_tokens: int = 0


@runtime_checkable
class InferenceBackend(Protocol):
    model_id: str

    def generate(self, messages: list[dict], params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        """Stream the assistant's reply to ``messages``; closing the iterator stops generation."""
        ...

    async def ready(self) -> bool:
        """Whether the backend can answer now (cheap: called by every readiness probe)."""
        ...

    async def aclose(self) -> None:
        """Stop any generation and release the model."""
        ...


class StopScanner:
    """Cuts a stream of text at the first stop string, even one split across deltas.

    Text that could be the start of a stop string is held back until the next delta shows
    whether it is; the stop string itself is never returned.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return the text that is safe to emit now, and whether a stop string was reached."""
        buffer = self.pending + text
        hits = [i for i in (buffer.find(s) for s in self.stops) if i != -1]
        if hits:
            self.pending = ""
            return buffer[: min(hits)], True
        held = max((self._partial(buffer, s) for s in self.stops), default=0)
        self.pending = buffer[len(buffer) - held:] if held else ""
        return buffer[: len(buffer) - held], False

    def flush(self) -> str:
        """The held-back text, once the stream has ended without a stop string."""
        text, self.pending = self.pending, ""
        return text

    @staticmethod
    def _partial(buffer: str, stop: str) -> int:
        """Length of the longest end of ``buffer`` that is a proper start of ``stop``."""
        for n in range(min(len(stop) - 1, len(buffer)), 0, -1):
            if buffer.endswith(stop[:n]):
                return n
        return 0


END = object()  # put on a request's queue when its backend closes under it


class QueuedRequest:
    """A request that a backend's decode thread serves: chunks (or an exception, or END) arrive on
    ``queue`` from that thread; ``cancel()`` makes the thread drop it before its next step."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = self.done = False

    def cancel(self) -> None:
        self.cancelled = True

    def emit(self, item: Any) -> None:
        """From the decode thread: hand ``item`` to the waiting consumer."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the consumer's loop is gone: nobody is listening
            self.cancelled = True

    async def chunks(self) -> AsyncIterator[GenerationChunk]:
        """The chunks up to the final one; an exception from the thread is a BackendError, and
        closing this iterator (a client gone) cancels the request."""
        from changjak.errors import BackendError

        try:
            while (item := await self.queue.get()) is not END:
                if isinstance(item, BaseException):
                    raise BackendError(f"generation failed: {item.__class__.__name__}: {item}") from item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            self.cancel()


class DecodeLoop(ABC):
    """The thread that owns a model and serves queued requests, started by the first submit.

    Subclasses write ``_run`` (waiting on ``_wake`` for ``waiting`` to fill or ``closed``), say how
    many requests are taken (``taken``) and what to free when closed before any thread started.
    """

    engine = "the backend"  # for errors: "the llama.cpp backend is closed"
    thread_name = "changjak-decode"

    def __init__(self, *, slots: int, max_queue: int) -> None:
        self.slots, self.max_queue = slots, max_queue
        self.waiting: deque[Any] = deque()
        self.closed = False
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def taken(self) -> int:
        """Requests off the queue and not finished (decoding or being admitted)."""

    def submit(self, request: Any) -> None:
        """Queue ``request`` for the next step; refuse when every slot and the queue are taken."""
        from changjak.errors import BackendError, ServiceUnavailable

        with self._wake:
            if self.closed:
                raise BackendError(f"{self.engine} is closed")
            if len(self.waiting) + self.taken() >= self.slots + self.max_queue:
                raise ServiceUnavailable(f"The model is busy ({len(self.waiting)} requests waiting); retry shortly.",
                                         code="model_overloaded")
            self.waiting.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
                self._thread.start()
            self._wake.notify()

    def close(self, *, join: bool = False) -> None:
        """Stop after the running step (waiting and running requests get END); ``join``: wait for it."""
        with self._wake:
            self.closed = True
            self._wake.notify()
            thread = self._thread
            if thread is None:
                self._closed_idle()
        if join and thread is not None and thread is not threading.current_thread():
            thread.join()

    @abstractmethod
    def _closed_idle(self) -> None:
        """What to free when closed before any request started the thread."""

    @abstractmethod
    def _run(self) -> None:
        """The decode thread: admit from ``waiting``, step, until ``closed``."""


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading items ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
