"""The app's OpenAPI schema says what it really answers: errors in the OpenAI shape.

FastAPI documents a 422 ``HTTPValidationError`` on every route with a body or parameters, but
``changjak.serve.errors`` answers a bad request with 400 and ``{"error": {...}}``, and any route
may answer 401/403/404/413/429/503 the same way. :func:`install` rewrites the generated schema
once: the 422s go, and every operation gets a ``default`` response with the ``ErrorBody`` schema,
so clients generated from it, and schemathesis (``tests/serve/test_schema.py``), see the truth.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from changjak.serve.protocol import ErrorBody

_REF = "#/components/schemas/ErrorBody"


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` return the corrected schema (built on first call, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                                 routes=app.routes, description=app.description)
            app.openapi_schema = fix(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def fix(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in body.pop("$defs", {}).items():
        components.setdefault(name, definition)
    components["ErrorBody"] = body
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses["default"] = {"description": "An error, in the OpenAI shape",
                                    "content": {"application/json": {"schema": {"$ref": _REF}}}}
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema
