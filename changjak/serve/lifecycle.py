"""Graceful shutdown: on SIGTERM the gateway drains instead of dropping what it is answering.

    changjak serve                       # then: kill -TERM <pid>

What happens, in order: the signal sets :attr:`Lifecycle.draining`, so every new request (also
one arriving on a kept-alive connection) gets 503 ``service_unavailable`` with ``Connection:
close`` and ``/readyz`` answers 503 at once, and the balancer stops sending traffic; uvicorn
closes its listening socket (new connections are refused) and waits up to
``settings.serve.drain_timeout_s`` (its ``timeout_graceful_shutdown``) for in-flight requests
and streams to end; then the lifespan closes the backend and the process exits 0. ``/healthz``
and ``/metrics`` keep answering while draining: the process is alive, and its last numbers count.

The hook chains onto uvicorn's own signal handler from inside the lifespan, so it works the same
in one process and in each ``--workers`` process, and does nothing under a test client.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)
STILL_SERVED = frozenset({"/healthz", "/metrics"})
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False
        self.drain_started: float | None = None

    def drain(self) -> None:
        """Refuse new requests from now on (idempotent)."""
        if not self.draining:
            self.draining, self.drain_started = True, time.monotonic()
            logger.info("draining: new requests get 503 while in-flight ones finish")


class DrainMiddleware:
    """Pure ASGI: while draining, answer new requests 503 before they reach any route."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.lifecycle.draining or scope["path"] in STILL_SERVED:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": {"message": "The server is shutting down; retry on another replica.",
                                     "type": "service_unavailable", "param": None, "code": "draining"}}).encode()
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"), (b"retry-after", b"1")]})
        await send({"type": "http.response.body", "body": body})


def hook_signals(lifecycle: Lifecycle) -> Callable[[], None]:
    """Chain :meth:`Lifecycle.drain` onto uvicorn's SIGTERM/SIGINT handlers; returns the undo.

    Only a handler that belongs to a running uvicorn server is chained, so test clients and
    other hosts keep their own signal handling.
    """
    previous: dict[int, Any] = {}
    for sig in _SIGNALS:
        try:
            handler = signal.getsignal(sig)
        except ValueError:  # not the main thread
            return lambda: None
        if not _is_uvicorn(handler):
            continue

        def chained(signum: int, frame: Any, _handler: Any = handler) -> None:
            lifecycle.drain()
            _handler(signum, frame)

        previous[sig] = handler
        signal.signal(sig, chained)

    def undo() -> None:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)

    return undo


def _is_uvicorn(handler: Any) -> bool:
    owner = getattr(handler, "__self__", None)
    return owner is not None and type(owner).__module__.startswith("uvicorn")
