"""Log lines that say which request they belong to: one JSON object per line, or plain text.

    configure("json")   # in serve.main and in every worker, before uvicorn starts

The observability middleware binds each request's :class:`~changjak.serve.context.RequestContext`
to a context variable (:func:`bind`), so any ``logger.info(...)`` made while answering it, in a
route, a backend or a stream, carries its ``request_id``, tenant and key prefix without being
passed them. The middleware's own line per request (logger ``changjak.access``) adds the route
template, status and latency. ``changjak.safety.logs.MaskPii`` sits on the handler, so no line
holds PII; keys never reach the context (``Caller.key_id`` is the visible prefix).
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Literal

from changjak.safety.logs import MaskPii
from changjak.serve.context import RequestContext

current: ContextVar[RequestContext | None] = ContextVar("changjak_request", default=None)
_FIELDS = ("route", "status", "latency_ms")  # what the access line adds as `extra=`
_ENCODE = json.JSONEncoder(ensure_ascii=False, default=str).encode  # = json.dumps(..., same options), built once


def bind(ctx: RequestContext | None) -> Token:
    """Make ``ctx`` the current request's context (for logs and the metered backend)."""
    return current.set(ctx)


def unbind(token: Token) -> None:
    current.reset(token)


def request_fields() -> dict[str, str | None]:
    """The current request's id, tenant and key prefix (None outside a request)."""
    ctx = current.get()
    caller = ctx.caller if ctx is not None else None
    return {"request_id": ctx.request_id if ctx is not None else None,
            "tenant": caller.tenant if caller else None, "key_prefix": caller.key_id if caller else None}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request's fields, then extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        entry.update(request_fields())
        for name in _FIELDS:
            if (value := getattr(record, name, None)) is not None:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        return _ENCODE(entry)


class TextFormatter(logging.Formatter):
    """``time level logger [request_id] message``, for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.request_id = request_fields()["request_id"] or "-"
        return super().format(record)


def configure(log_format: Literal["json", "text"] = "json", level: int = logging.INFO) -> logging.Handler:
    """One stderr handler on the root logger (uvicorn's loggers propagate to it), PII masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(MaskPii())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_changjak", False)]:
        root.removeHandler(old)
    handler._changjak = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()  # propagate to ours instead
        logging.getLogger(name).propagate = True
    return handler
