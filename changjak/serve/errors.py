"""One exception handler: every error the API answers with has the OpenAI shape
``{"error": {"message", "type", "param", "code"}}``, so the ``openai`` SDK raises the matching class.

Code raises ``changjak.errors.APIError`` subclasses. Request validation failures become 400 (not
FastAPI's 422) naming the parameter; unknown routes and methods keep their 404/405; anything
else is a 500 with a generic message; its traceback goes to the server log, never to the client.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from changjak.errors import APIError, BadRequest, NotFound, RateLimited
from changjak.serve.protocol import ErrorBody

INTERNAL_ERROR = "The server had an error while processing your request."


class MethodNotAllowed(APIError):
    status_code = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


def install(app: FastAPI) -> None:
    """Route every exception the app can raise to :func:`render`."""
    for exc_class in (APIError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_class, render)


async def render(request: Request, exc: Exception) -> JSONResponse:
    """Answer with the OpenAI error shape for ``exc``."""
    error = to_api_error(exc, request)
    headers = {"Retry-After": str(math.ceil(error.retry_after))} if isinstance(error, RateLimited) else None
    body = ErrorBody.model_validate(error.to_dict())
    return JSONResponse(body.model_dump(), status_code=error.status_code, headers=headers)


def to_api_error(exc: BaseException, request: Request | None = None) -> APIError:
    """The APIError a client should see for ``exc`` (a generic 500 for anything unexpected)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, RequestValidationError):
        return _bad_request(exc.errors())
    if isinstance(exc, StarletteHTTPException) and request is not None:
        route = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            return NotFound(f"Unknown route: {route}.", code="unknown_url")
        if exc.status_code == 405:
            return MethodNotAllowed(f"Method not allowed: {route}.")
        error = BadRequest(str(exc.detail))
        error.status_code = exc.status_code
        return error
    return APIError(INTERNAL_ERROR)


def _bad_request(errors: Sequence[Any]) -> BadRequest:
    """A 400 for the first validation error, naming its parameter (never echoing its value)."""
    first = errors[0]
    loc = list(first["loc"])
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    param = _param(loc)
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "json_invalid":
        return BadRequest("The request body is not valid JSON.", code="invalid_json")
    if first["type"] == "missing":
        text = f"Missing required parameter: '{param}'." if param else "The request body is missing."
        return BadRequest(text, param=param, code="missing_required_parameter")
    where = f"'{param}'" if param else "request body"
    return BadRequest(f"Invalid {where}: {message}.", param=param, code="invalid_value")


def _param(loc: Sequence[str | int]) -> str | None:
    """``["messages", 0, "role"]`` -> ``"messages[0].role"``."""
    param = ""
    for part in loc:
        param += f"[{part}]" if isinstance(part, int) else (f".{part}" if param else str(part))
    return param or None
