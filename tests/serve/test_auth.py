"""API keys and roles: Bearer auth, bootstrap keys hashed once, managed keys, scopes, tenants."""

from __future__ import annotations

import logging
from typing import Annotated

import httpx
import openai
import pytest
from fastapi import Depends, FastAPI, Request
from pydantic import SecretStr

from changjak.backends.inference.fake import FakeBackend
from changjak.serve.app import create_app
from changjak.serve.auth import (
    ROLE_SCOPES,
    SCOPES,
    KeyRing,
    MetricsReader,
    Require,
    all_routes,
    can_see,
    declared_scopes,
    public_paths,
    require,
    tenant_filter,
)
from changjak.serve.context import Caller, context_of
from tests.serve.conftest import KEY, MODEL, serving

pytestmark = pytest.mark.anyio
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "안녕"}]}


def _whoami(app: FastAPI) -> None:
    @app.get("/v1/whoami")
    async def whoami(caller: Annotated[Caller, Depends(require("models:read"))], request: Request) -> dict:
        ctx = context_of(request)
        return {"key_id": caller.key_id, "role": caller.role, "tenant": caller.tenant,
                "bootstrap": caller.bootstrap, "same_on_ctx": ctx is None or ctx.caller == caller}


async def test_a_wrong_key_is_a_401_that_never_echoes_it(app, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for wrong in ("sk-wrong-secret-4242", "cj_0123abcd_wrong-secret-4242-xxxxxxxxxxxxxxxx"):
        async with serving(app, api_key=wrong) as sdk:
            with pytest.raises(openai.AuthenticationError) as caught:
                await sdk.chat.completions.create(**CHAT)
        assert (caught.value.status_code, caught.value.code) == (401, "invalid_api_key")
        assert caught.value.type == "authentication_error"
        assert "4242" not in caught.value.response.text
    assert "4242" not in caplog.text


async def test_a_missing_key_is_a_401_saying_how_to_send_one(app) -> None:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    async with app.router.lifespan_context(app), http:
        missing = await http.post("/v1/chat/completions", json=CHAT)
        not_bearer = await http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Basic {KEY}"})
    for response in (missing, not_bearer):
        assert response.status_code == 401
        assert "Authorization: Bearer" in response.json()["error"]["message"]


async def test_any_of_several_bootstrap_keys_is_an_admin_of_every_tenant(make_settings) -> None:
    app = create_app(make_settings(api_keys="first-key, second-key"), FakeBackend(MODEL))
    _whoami(app)
    for key in ("first-key", "second-key"):
        async with serving(app, api_key=key) as sdk:
            assert (await sdk.chat.completions.create(**CHAT)).choices[0].message.content == "안녕"
            me = await sdk.get("/whoami", cast_to=httpx.Response)
        body = me.json()
        assert (body["role"], body["tenant"], body["bootstrap"], body["same_on_ctx"]) == ("admin", "*", True, True)
        assert body["key_id"].startswith("bootstrap_") and key not in body["key_id"]


async def test_with_no_bootstrap_keys_only_managed_keys_work(make_settings) -> None:
    app = create_app(make_settings(), FakeBackend(MODEL))
    async with serving(app, api_key="anything") as sdk:
        with pytest.raises(openai.AuthenticationError, match="changjak keys create"):
            await sdk.chat.completions.create(**CHAT)
        managed, _ = app.state.key_store.create("writer", "user", "acme")
        sdk = sdk.with_options(api_key=managed)
        assert (await sdk.chat.completions.create(**CHAT)).choices[0].message.content == "안녕"


async def test_a_role_without_the_scope_is_a_403_naming_it(app) -> None:
    async with serving(app) as sdk:
        reader, _ = app.state.key_store.create("reader", "operator", "acme")
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await sdk.with_options(api_key=reader).chat.completions.create(**CHAT)
    assert caught.value.status_code == 403 and caught.value.type == "permission_error"
    assert "'inference'" in caught.value.message and "operator" in caught.value.message
    assert caught.value.code == "missing_scope"


async def test_revoked_and_expired_keys_are_401s_that_say_so(app) -> None:
    async with serving(app) as sdk:
        store = app.state.key_store
        revoked, record = store.create("gone", "user", "acme")
        store.revoke(record.prefix)
        expiring, record = store.create("old", "user", "acme", expires_in_days=1)
        with store.engine.begin() as conn:
            from changjak.serve.keys import api_keys

            conn.execute(api_keys.update().where(api_keys.c.prefix == record.prefix).values(expires_at=1.0))
        for key, words in ((revoked, "revoked"), (expiring, "expired")):
            with pytest.raises(openai.AuthenticationError, match=words):
                await sdk.with_options(api_key=key).models.list()


async def test_metrics_style_routes_are_public_only_when_the_settings_say_so(make_settings) -> None:
    for public, expected in ((True, 200), (False, 401)):
        app = create_app(make_settings(api_keys=KEY, auth={"metrics_public": public}), FakeBackend(MODEL))

        @app.get("/metrics-like")
        async def metrics_like(_: MetricsReader) -> dict:
            return {}

        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
        async with app.router.lifespan_context(app), http:
            assert (await http.get("/metrics-like")).status_code == expected
            authed = await http.get("/metrics-like", headers={"Authorization": f"Bearer {KEY}"})
            assert authed.status_code == 200
        assert ("/metrics" in public_paths(app.state.settings)) is public


def test_routes_declare_their_scopes(app: FastAPI) -> None:
    by_path = {route.path: declared_scopes(route) for route in all_routes(app)}
    assert by_path["/v1/chat/completions"] == {"inference"}
    assert by_path["/v1/models"] == {"models:read"}
    assert by_path["/healthz"] == frozenset()
    assert repr(require("inference")) == "Require('inference')" and isinstance(require("inference"), Require)
    with pytest.raises(ValueError, match="unknown scope"):
        require("everything")


def test_the_roles_table() -> None:
    assert ROLE_SCOPES["admin"] == SCOPES
    assert "audit:read" not in ROLE_SCOPES["operator"] and "inference" not in ROLE_SCOPES["operator"]
    assert ROLE_SCOPES["user"] == {"inference", "feedback:write", "models:read"}
    assert ROLE_SCOPES["developer"] >= ROLE_SCOPES["user"] and "keys:manage" not in ROLE_SCOPES["developer"]


def test_tenants_see_only_their_own_unless_star() -> None:
    star = Caller(key_id="b", name="b", role="admin", tenant="*")
    acme = Caller(key_id="a", name="a", role="admin", tenant="acme")
    assert can_see(star, "acme") and can_see(acme, "acme") and not can_see(acme, "other")
    assert (tenant_filter(star), tenant_filter(acme)) == (None, "acme")


def test_the_key_ring_keeps_hashes_only() -> None:
    ring = KeyRing([SecretStr("alpha-key"), SecretStr("beta-key")])
    assert len(ring) == 2
    assert "alpha-key" not in repr(vars(ring))
    assert ring.identify("alpha-key") != ring.identify("beta-key")
    assert ring.identify("alpha-key") is not None
    assert ring.identify("gamma-key") is None
    assert len(KeyRing([])) == 0


async def test_a_bootstrap_key_shaped_like_a_managed_one_still_works(make_settings) -> None:
    shaped = "cj_0123abcd_" + "b" * 43
    app = create_app(make_settings(api_keys=shaped), FakeBackend(MODEL))
    async with serving(app, api_key=shaped) as sdk:
        assert [m.id async for m in sdk.models.list()] == [MODEL]
