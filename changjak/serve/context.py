"""What one request carries through the gateway: its id, who called, and what was decided.

``ContextMiddleware`` (outermost) makes a :class:`RequestContext` for every HTTP request and puts
it on ``request.state.ctx`` (``scope["state"]["ctx"]``); it accepts a client's ``X-Request-Id``
when it is short and printable, else makes one, and echoes it on the response. Everything after
it adds to the same object: authentication sets ``caller``, the chat route sets
``model_version`` and the token counts, limits/cache/safety write into ``decisions``, and the
audit middleware turns the whole of it into one audit record when the response has ended.

Nothing secret goes in here: ``Caller.key_id`` is the key's visible prefix, never the key.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

Role = Literal["admin", "operator", "developer", "user"]
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
_DIGITS = re.compile(r"\d{6}|\d{2,4}[-.]\d{3,4}")


@dataclass(frozen=True)
class Caller:
    """The authenticated principal behind a request, with the limits of its key."""

    key_id: str  # the key's visible prefix (e.g. "cj_3f9a1c2b"), safe to log
    name: str
    role: Role
    tenant: str
    scopes: frozenset[str] = frozenset()
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute (prompt + completion)
    concurrency: int | None = None  # requests in flight at once
    budget: int | None = None  # tokens per budget period
    bootstrap: bool = False  # a CHANGJAK_API_KEYS key rather than a managed one


@dataclass
class RequestContext:
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    received_at: float = field(default_factory=time.time)  # unix time
    caller: Caller | None = None
    model_version: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    decisions: dict[str, Any] = field(default_factory=dict)  # e.g. {"cache": "hit", "limit": "rpm"}
    status: int | None = None  # set when the response starts

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


def request_id_from(scope: Scope) -> str:
    """The client's ``X-Request-Id`` when it is a safe token, else a new one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID.fullmatch(text) and not _holds_pii(text):
                return text
            break
    return f"req_{os.urandom(16).hex()}"  # 32 random hex digits, as uuid4().hex but cheaper


def _holds_pii(text: str) -> bool:
    """Whether a client's request id carries personal data (a phone number, an email ...).

    Ids go into every log line and audit record as they are, so one holding PII is replaced by a
    fresh id. Only ids with a long digit run or an ``@`` are checked: the check is then cheap.
    """
    if "@" not in text and not _DIGITS.search(text):
        return False
    from changjak.safety import pii

    return bool(pii.mask(text).counts)


def context_of(scope_or_request: Any) -> RequestContext | None:
    """The context of a request (a ``Request`` or an ASGI scope), if the middleware made one."""
    scope = scope_or_request if isinstance(scope_or_request, dict) else scope_or_request.scope
    return scope.get("state", {}).get("ctx")


class ContextMiddleware:
    """Pure ASGI (streams pass through untouched): make the context, echo ``X-Request-Id``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = RequestContext(request_id=request_id_from(scope))
        scope.setdefault("state", {})["ctx"] = ctx

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                ctx.status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", ctx.request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)
