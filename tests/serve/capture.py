"""Test helper: the RequestContext of every request an app answered, for tests that read decisions."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from changjak.serve.context import ContextMiddleware, RequestContext, context_of


class Capture:
    """Wraps ``app`` (adding ContextMiddleware) and keeps each request's context in ``contexts``."""

    def __init__(self, app: FastAPI) -> None:
        app.add_middleware(ContextMiddleware)  # harmless if the app already has one: the innermost wins
        self.app = app
        self.contexts: list[RequestContext] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http" and (ctx := context_of(scope)) is not None:
                self.contexts.append(ctx)
