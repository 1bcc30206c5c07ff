"""The chat route's fast path: ``POST /v1/chat/completions`` without FastAPI's routing and dependency solving.

    app.add_middleware(ChatFastPath)   # added first: innermost, inside the drain check

A chat request is the gateway's hot path, and FastAPI's generic machinery around it (matching
every route, solving the dependency tree, three exit stacks, the exception middleware) cost
~0.5 ms of CPU a request, as much as the route's own work. This pure ASGI middleware does for a
well-formed request exactly what FastAPI would do, in a straight line: it reads the body, decodes
and validates it as FastAPI does (``json.loads`` then ``ChatCompletionRequest``), resolves the
route's own dependencies (the bearer credentials, ``Principal``, ``GatewayDep``), calls the same
endpoint function, and answers an :class:`~changjak.errors.APIError` (401, 403, 404, 429 ...) with
the same handler (``changjak.serve.errors.render``). Anything else raised goes on up, to the
server-error handler, as under FastAPI. ``scope["route"]`` and ``scope["endpoint"]`` are set as
the router sets them, so the audit record and the metrics name the route template.

Everything that is not the plain case goes to FastAPI unchanged, the body replayed: another
path or method, a body that does not decode or validate (so every 400 keeps FastAPI's wording),
a content type FastAPI would not read as JSON, a client that hangs up while sending, an app with
``dependency_overrides``, or a route whose dependencies are not the ones this module knows
(checked once, when the app is first called).
"""

from __future__ import annotations

import json
import logging
import typing
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from changjak.errors import APIError
from changjak.serve import errors
from changjak.serve.auth import Principal, _bearer, all_routes
from changjak.serve.deps import get_gateway
from changjak.serve.protocol import ChatCompletionRequest
from changjak.serve.routes.chat import create_chat_completion

logger = logging.getLogger(__name__)
PATH = "/v1/chat/completions"
_PRINCIPAL = typing.get_args(Principal)[1].dependency  # the route's own Require("inference")


class ChatFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route: Any = None  # the route context, found on the first request
        self.enabled: bool | None = None  # None until checked
        self.served = 0  # requests answered here (tests check that it engages)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        fastapi_app = scope["app"]
        if self.enabled is None:
            self.enabled = self._check(fastapi_app)
        if not self.enabled or fastapi_app.dependency_overrides:
            await self.app(scope, receive, send)
            return
        messages, whole = await _read_body(receive)
        replay = _replay(messages, receive)
        body = _decode(scope, b"".join(m.get("body", b"") for m in messages)) if whole else None
        if body is None:  # FastAPI says what is wrong with it, in its words
            await self.app(scope, replay, send)
            return
        scope["route"], scope["endpoint"], scope["path_params"] = self.route, create_chat_completion, {}
        request = Request(scope, replay)
        try:
            caller = await _PRINCIPAL(request, await _bearer(request))
            response = await create_chat_completion(body, caller, await get_gateway(request), request)
        except (APIError, HTTPException) as exc:  # what FastAPI's exception middleware answers
            response = await errors.render(request, exc)
        self.served += 1
        await response(scope, replay, send)

    def _check(self, fastapi_app: Any) -> bool:
        """Whether the app's chat route is the one this fast path stands in for."""
        for route in all_routes(fastapi_app):
            if getattr(route, "path", None) == PATH and "POST" in (getattr(route, "methods", None) or ()):
                dependant = route.dependant
                calls = [d.call for d in dependant.dependencies]
                if (route.endpoint is create_chat_completion and calls == [_PRINCIPAL, get_gateway]
                        and [p.name for p in dependant.body_params] == ["body"]):
                    self.route = getattr(route, "route", route)
                    return True
                break
        logger.warning("the chat route is not the one changjak.serve.fastpath knows: serving it through FastAPI")
        return False


async def _read_body(receive: Receive) -> tuple[list[Message], bool]:
    """The request's messages up to the end of its body, and whether the body was whole."""
    messages = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, False
        if not message.get("more_body", False):
            return messages, True


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` again, then whatever comes next (``http.disconnect``)."""
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


def _decode(scope: Scope, raw: bytes) -> ChatCompletionRequest | None:
    """The validated request, or None when FastAPI should answer it (it would refuse it, or might)."""
    content_type = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value.decode("latin-1")
            break
    if content_type is not None:  # FastAPI reads JSON only from application/json or application/*+json
        kind = content_type.split(";", 1)[0].strip().lower()
        main, _, sub = kind.partition("/")
        if main != "application" or not (sub == "json" or sub.endswith("+json")):
            return None
    try:
        return ChatCompletionRequest.model_validate(json.loads(raw))
    except Exception:  # noqa: BLE001 - bad JSON, a validation error, a refused field: FastAPI's to answer
        return None
