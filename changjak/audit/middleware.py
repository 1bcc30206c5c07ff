"""One audit record per request, committed before the answer's last byte goes out.

    app.add_middleware(AuditMiddleware, skip=settings.audit.skip_routes)   # inside ContextMiddleware
    writer = AuditWriter(engine, safety.mask_for_log); await writer.start()  # in the lifespan
    app.state.audit = writer; ...; await writer.aclose()

:class:`AuditMiddleware` is pure ASGI: every message passes through unchanged. When the response's
final body message (or a stream's ``data: [DONE]``) is about to be sent, it builds the record from
the request's :class:`~changjak.serve.context.RequestContext` and waits until the record is
committed, then lets the message go; so a client that has the whole answer implies a durable record, even if the
process is killed the next instant. A request whose client went away, or whose app raised, is
recorded when it ends (``outcome`` says which). If the record cannot be written the final message
is not sent: the answer stays incomplete rather than unaudited.

:class:`AuditWriter` is group commit: one task takes every record waiting, appends them in one
transaction (masking included), and wakes their requests. Under load a transaction carries
hundreds of records, so the database does one commit for all. A large batch, or any batch for
PostgreSQL, is appended in a worker thread; a small one for the embedded SQLite file on the event
loop itself, which costs less than the hand-off (measured on cache hits: 1.9 -> 1.0 ms a request
at one client), unless another process holds the write lock for more than 2 ms. No commit on the
loop copies SQLite's write-ahead log back into the file (SQLite's default, which waits for two
fsyncs with every request in flight: 17 ms stalls, ``benchmarks/audit_append.py``); the writer's
thread checkpoints it between batches (``store.Appender.checkpoint``) while answers go out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy.engine import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from changjak.audit import AuditUnavailable, store
from changjak.serve.context import RequestContext, context_of

logger = logging.getLogger(__name__)
SKIP_ROUTES = ("/healthz", "/readyz", "/metrics")
INLINE_MAX = 16  # records a batch may hold to be appended on the event loop (SQLite only)
INLINE_WAIT_MS = 2  # how long the loop waits for SQLite's write lock before handing the batch to the thread
SSE_DONE = b"data: [DONE]\n\n"  # an SDK has the whole answer once it reads this, before the body ends


class AuditWriter:
    """Appends records to the audit chain in batches; ``await write(entry)`` returns once it is committed."""

    def __init__(self, engine: Engine, mask: Callable[[str], str], *, max_batch: int = 1000) -> None:
        self.engine, self.clean, self.max_batch = engine, store.Cleaner(mask), max_batch
        # by the loop or the writer's thread, never both at once; it checkpoints a SQLite file's log when told:
        self._appender = store.Appender(engine, own_checkpoints=True)
        self._pending: list[tuple[dict[str, Any], asyncio.Future[int] | None]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: ThreadPoolExecutor | None = None  # its own: a busy default pool never delays a commit
        self._closing = False
        self.batches = 0  # transactions committed, for tests and metrics

    @classmethod
    async def open(cls, engine: Engine, safety: Any, settings: Any) -> AuditWriter | None:
        """A started writer for ``settings.audit`` (None when the audit trail is off)."""
        if not settings.enabled:
            return None
        writer = cls(engine, safety.mask_for_log, max_batch=settings.max_batch)
        await writer.start()
        return writer

    async def start(self) -> None:
        self._wake, self._closing = asyncio.Event(), False
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def write(self, entry: dict[str, Any]) -> int:
        """Queue ``entry`` and wait until it is committed; its seq."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._enqueue(entry, future)
        return await future

    def submit(self, entry: dict[str, Any]) -> None:
        """Queue ``entry`` without waiting (a cancelled request cannot wait)."""
        self._enqueue(entry, None)

    def _enqueue(self, entry: dict[str, Any], future: asyncio.Future[int] | None) -> None:
        if self._task is None or self._task.done():
            raise AuditUnavailable("The audit trail is not running.")
        self._pending.append((entry, future))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
                entries = [entry for entry, _ in batch]
                try:
                    seqs = self._append_inline(entries) if len(entries) <= INLINE_MAX else None
                    if seqs is None:
                        seqs = await asyncio.get_running_loop().run_in_executor(self._thread, self._append, entries)
                except Exception:
                    logger.exception("could not write %d audit records", len(batch))
                    _settle(batch, None)
                else:
                    self.batches += 1
                    _settle(batch, seqs)
                    if self._appender.checkpoint_due:  # answers go out meanwhile; new records wait for it
                        await self._checkpoint()
            if self._closing:
                return

    async def _checkpoint(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._appender.checkpoint)
        except Exception as error:  # noqa: BLE001 - the next one tries again
            logger.warning("could not checkpoint the audit log: %s", error)

    def _append(self, entries: list[dict[str, Any]], wait_ms: int = 30_000) -> list[int]:
        return self._appender([store.clean_entry(entry, self.clean) for entry in entries], wait_ms=wait_ms)

    def _append_inline(self, entries: list[dict[str, Any]]) -> list[int] | None:
        """A few records into a local SQLite file on the event loop itself, or None: not here, or the
        lock is taken (the thread then waits for it). Handing a batch to the thread and back costs the
        loop more than the append's ~0.1 ms; a large batch goes to the thread, where SQLite's own work
        runs beside the loop."""
        if not self._appender.local:
            return None
        try:
            return self._append(entries, wait_ms=INLINE_WAIT_MS)
        except store.Busy:
            return None

    async def aclose(self) -> None:
        """Write what is still waiting, then stop."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        await self._task
        self._task = None
        await asyncio.get_running_loop().run_in_executor(self._thread, self._appender.close)
        self._thread.shutdown()


def _settle(batch: Iterable[tuple[dict[str, Any], asyncio.Future[int] | None]], seqs: list[int] | None) -> None:
    for i, (_, future) in enumerate(batch):
        if future is None or future.done():
            continue
        if seqs is None:
            future.set_exception(AuditUnavailable("The audit record of this request could not be written."))
        else:
            future.set_result(seqs[i])


def entry_of(scope: Scope, ctx: RequestContext, status: int | None, outcome: str) -> dict[str, Any]:
    """The raw audit entry of a request (cleaned later, in the writer's thread)."""
    caller = ctx.caller
    route = scope.get("route")
    return {"request_id": ctx.request_id, "time": ctx.received_at, "method": scope.get("method", ""),
            "route": getattr(route, "path", None), "key_prefix": caller.key_id if caller else None,
            "principal": caller.name if caller else None, "tenant": caller.tenant if caller else None,
            "model_version": ctx.model_version, "decisions": dict(ctx.decisions), "status": status,
            "outcome": outcome, "latency_ms": ctx.elapsed_ms(), "prompt_tokens": ctx.prompt_tokens,
            "completion_tokens": ctx.completion_tokens}


class AuditMiddleware:
    """Pure ASGI: record each request once, committed before its final body message is sent."""

    def __init__(self, app: ASGIApp, *, skip: Iterable[str] = SKIP_ROUTES) -> None:
        self.app = app
        self.skip = frozenset(skip)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = context_of(scope) if scope["type"] == "http" and scope["path"] not in self.skip else None
        writer: AuditWriter | None = getattr(getattr(scope.get("app"), "state", None), "audit", None)
        if ctx is None or writer is None:
            await self.app(scope, receive, send)
            return
        status: int | None = None
        recorded = False

        async def record(outcome: str) -> None:
            nonlocal recorded
            recorded = True
            await writer.write(entry_of(scope, ctx, status, outcome))

        async def audited_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not recorded and (
                    not message.get("more_body", False) or message.get("body", b"").endswith(SSE_DONE)):
                await record("complete")  # before the last byte, or before a stream's [DONE]
            await send(message)

        try:
            await self.app(scope, receive, audited_send)
        except asyncio.CancelledError:
            if not recorded:
                recorded = True
                try:
                    writer.submit(entry_of(scope, ctx, status, "cancelled"))
                except AuditUnavailable:
                    logger.error("the audit trail had stopped: request %s went unrecorded", ctx.request_id)
            raise
        except BaseException:
            if not recorded:
                status = status or 500  # the error handler outside us answers 500
                await record("error")
            raise
        if not recorded:  # the client went away before the end
            await record("disconnected")
