"""Every route × every role: 401 without a key, 403 for a role lacking the route's scope, neither for a
role holding it. The routes are walked from the app itself, so a route added later is covered, and
one that declares no scope fails here unless it is in auth.PUBLIC_PATHS."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import FastAPI

from changjak.backends.inference.fake import FakeBackend
from changjak.errors import PermissionDenied
from changjak.serve.app import create_app
from changjak.serve.auth import ROLE_SCOPES, ROLES, ModelReader, all_routes, declared_scopes, public_paths
from tests.serve.conftest import KEY, MODEL

pytestmark = pytest.mark.anyio
_PARAM = re.compile(r"\{[^}]+\}")


def _calls(app: FastAPI) -> list[tuple[str, str, object]]:
    """(method, concrete url, route) for every method of every route."""
    calls = []
    for route in all_routes(app):
        path = getattr(route, "path", None) or getattr(route, "path_format", None) or repr(route)
        for method in sorted(set(getattr(route, "methods", None) or {"GET"}) - {"HEAD", "OPTIONS"}):
            calls.append((method, _PARAM.sub("x", path), route))
    return calls


async def _send(http: httpx.AsyncClient, method: str, url: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    return await http.request(method, url, headers=headers, **body)


async def _problems(app: FastAPI) -> list[str]:
    """What is wrong with the app's routes, one line each."""
    public = public_paths(app.state.settings)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    problems: list[str] = []
    async with app.router.lifespan_context(app), http:
        keys = {role: app.state.key_store.create(f"matrix {role}", role, "matrix")[0] for role in ROLES}
        for method, url, route in _calls(app):
            where = f"{method} {getattr(route, 'path', url)}"
            if getattr(route, "path", None) in public:
                if (status := (await _send(http, method, url, None)).status_code) in (401, 403):
                    problems.append(f"{where}: public, but {status} without a key")
                continue
            scopes = declared_scopes(route)
            if not scopes:
                problems.append(f"{where}: declares no scope (add Depends(require(...)) or make it public "
                                "in changjak/serve/auth.py PUBLIC_PATHS)")
                continue
            if (status := (await _send(http, method, url, None)).status_code) != 401:
                problems.append(f"{where}: {status} without a key, not 401")
            for role, key in keys.items():
                response = await _send(http, method, url, key)
                allowed = scopes <= ROLE_SCOPES[role]
                if allowed and response.status_code in (401, 403):
                    problems.append(f"{where}: {role} holds {sorted(scopes)} but got {response.status_code}")
                if not allowed and (response.status_code != 403
                                    or response.json()["error"]["type"] != "permission_error"):
                    problems.append(f"{where}: {role} lacks {sorted(scopes)} but got {response.status_code}")
    return problems


@pytest.mark.parametrize("metrics_public", [False, True])
async def test_every_route_for_every_role(make_settings, metrics_public: bool) -> None:
    app = create_app(make_settings(api_keys=KEY, auth={"metrics_public": metrics_public}), FakeBackend(MODEL))
    problems = await _problems(app)
    assert not problems, "\n".join(problems)


async def test_a_route_without_a_scope_or_with_the_wrong_answers_is_reported(app: FastAPI) -> None:
    @app.get("/v1/unguarded")
    async def unguarded() -> dict:
        return {}

    @app.get("/v1/always-403/{id}")
    async def always_403(_: ModelReader, id: str) -> dict:
        raise PermissionDenied("no")

    problems = await _problems(app)
    assert any(p.startswith("GET /v1/unguarded: declares no scope") for p in problems)
    assert any(p.startswith("GET /v1/always-403/{id}: user holds") for p in problems)


def test_the_matrix_sees_the_known_routes(app: FastAPI) -> None:
    seen = {(method, getattr(route, "path", None)) for method, _, route in _calls(app)}
    for expected in [("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("POST", "/admin/keys"),
                     ("DELETE", "/admin/keys/{prefix}"), ("POST", "/admin/models/{name}/promote"),
                     ("GET", "/healthz"), ("GET", "/openapi.json")]:
        assert expected in seen
