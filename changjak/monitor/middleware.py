"""The observability middleware: metrics and one access log line per request, from its context.

    app.add_middleware(ObservabilityMiddleware, metrics=metrics)   # inside ContextMiddleware

Pure ASGI, so streams pass through untouched and are measured to their last byte. While the
request runs its context is bound for logging (:func:`changjak.serve.logging.bind`) and for the
metered backend; when the response has ended (or the app has failed: counted as 500), what the
context holds (caller, model version, tokens, decisions) becomes counts in :class:`Metrics`.
A client that hangs up before any response is counted as status 499.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from changjak.monitor.metrics import Metrics
from changjak.serve import logging as request_logs
from changjak.serve.context import context_of

access = logging.getLogger("changjak.access")
UNMATCHED = "unmatched"  # a path no route matched: never its raw text (unbounded labels)
CLIENT_GONE = 499


def route_template(scope: Scope) -> str:
    """The matched route's path template, e.g. ``/admin/keys/{prefix}``."""
    route = scope.get("route")
    return getattr(route, "path", None) or UNMATCHED


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = context_of(scope)
        token = request_logs.bind(ctx)
        started = time.perf_counter()
        status: int | None = None

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_and_watch)
        except BaseException:
            status = status or 500
            raise
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - started
            route, method = route_template(scope), scope.get("method", "")
            final = status or CLIENT_GONE
            self.metrics.observe_request(ctx, route=route, method=method, status=final, seconds=seconds)
            if access.isEnabledFor(logging.INFO):  # Logger.info, less its stack walk for the caller (~15 µs)
                access.handle(access.makeRecord(
                    access.name, logging.INFO, __file__, 0, "%s %s %d", (method, route, final), None, "access",
                    extra={"route": route, "status": final, "latency_ms": round(seconds * 1000, 2)}))
            request_logs.unbind(token)
