"""Request bodies no larger than ``settings.limits.max_body_bytes``: 413 in the OpenAI shape.

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_body_bytes)

Pure ASGI, so streamed responses pass through untouched. A declared ``Content-Length`` over the
limit is refused before a byte is read. A body without one (``Transfer-Encoding: chunked``) is
counted as it arrives and refused as soon as it passes the limit; the rest is never read and the
connection is closed. A body within the limit is handed to the app as it came, and later
``receive`` calls (``http.disconnect`` during a stream) pass through.

The other bounds on a chat request (messages, prompt length, stop strings, ``n``, NUL bytes and
lone surrogates) are in ``changjak.serve.protocol``.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from changjak.errors import PayloadTooLarge


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        first: list[Message] = []
        size = 0
        while True:  # read the body up to the limit; small bodies are the norm, so this is cheap
            message = await receive()
            first.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return first.pop(0) if first else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        error = PayloadTooLarge(f"The request body is larger than this server accepts "
                                f"({self.max_bytes} bytes).", code="request_too_large")
        body = json.dumps(error.to_dict()).encode()
        await send({"type": "http.response.start", "status": error.status_code, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    """The declared length; an unreadable one counts as too large (it cannot be trusted)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 1 << 62
    return None
