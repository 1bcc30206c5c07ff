"""The admin API over HTTP: keys (keys:manage) per tenant, and champion moves (models:promote)."""

from __future__ import annotations

import httpx
import openai
import pytest
from fastapi import FastAPI

from changjak.errors import RegistryError
from tests.serve.conftest import KEY, MODEL, serving

pytestmark = pytest.mark.anyio
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "안녕"}]}


def as_key(client: httpx.AsyncClient, key: str) -> dict:
    return {"headers": {"Authorization": f"Bearer {key}"}}


async def new_key(client: httpx.AsyncClient, **body) -> str:
    response = await client.post("/admin/keys", json=body)
    assert response.status_code == 201, response.text
    return response.json()["key"]


async def test_a_key_made_over_http_is_shown_once_and_works(app: FastAPI, admin: httpx.AsyncClient) -> None:
    made = await admin.post("/admin/keys", json={"name": "writer app", "role": "user", "tenant": "acme",
                                                 "owner": "minji", "rpm": 30, "expires_in_days": 30})
    assert made.status_code == 201
    body = made.json()
    key, prefix = body["key"], body["prefix"]
    assert key.startswith(prefix + "_") and body["status"] == "active" and body["created_by"].startswith("bootstrap_")
    assert (body["role"], body["tenant"], body["owner"], body["rpm"]) == ("user", "acme", "minji", 30)
    shown = (await admin.get(f"/admin/keys/{prefix}")).json()
    assert "key" not in shown and key not in str(shown) and shown["prefix"] == prefix
    async with serving(app, api_key=key) as sdk:
        assert (await sdk.chat.completions.create(**CHAT)).choices[0].message.content == "안녕"
        revoked = await admin.delete(f"/admin/keys/{prefix}")
        assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
        with pytest.raises(openai.AuthenticationError, match="revoked"):
            await sdk.chat.completions.create(**CHAT)


async def test_listing_pages_through_the_keys(admin: httpx.AsyncClient) -> None:
    for i in range(3):
        await new_key(admin, name=f"k{i}", role="user", tenant="paged")
    first = (await admin.get("/admin/keys", params={"tenant": "paged", "limit": 2})).json()
    second = (await admin.get("/admin/keys", params={"tenant": "paged", "limit": 2, "offset": 2})).json()
    assert (first["total"], len(first["data"]), first["has_more"]) == (3, 2, True)
    assert (len(second["data"]), second["has_more"]) == (1, False)
    assert (await admin.get("/admin/keys", params={"limit": 0})).status_code == 400


async def test_a_tenant_admin_manages_only_its_own_tenant(admin: httpx.AsyncClient) -> None:
    acme_admin = await new_key(admin, name="acme admin", role="admin", tenant="acme")
    theirs = (await admin.post("/admin/keys", json={"name": "other's", "role": "user", "tenant": "other"})).json()
    mine = await admin.post("/admin/keys", json={"name": "mine", "role": "user"}, **as_key(admin, acme_admin))
    assert mine.status_code == 201 and mine.json()["tenant"] == "acme"
    for tenant, code in (("other", "foreign_tenant"), ("*", "cli_only")):
        refused = await admin.post("/admin/keys", json={"name": "x", "role": "user", "tenant": tenant},
                                   **as_key(admin, acme_admin))
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, code)
    listed = (await admin.get("/admin/keys", **as_key(admin, acme_admin))).json()
    assert {k["tenant"] for k in listed["data"]} == {"acme"} and listed["total"] == 2
    foreign = await admin.get("/admin/keys", params={"tenant": "other"}, **as_key(admin, acme_admin))
    assert foreign.json()["data"] == []
    gone = await admin.get("/admin/keys/cj_00000000", **as_key(admin, acme_admin))
    hidden = await admin.get(f"/admin/keys/{theirs['prefix']}", **as_key(admin, acme_admin))
    not_revoked = await admin.delete(f"/admin/keys/{theirs['prefix']}", **as_key(admin, acme_admin))
    assert gone.status_code == hidden.status_code == not_revoked.status_code == 404
    assert gone.json() == hidden.json() == not_revoked.json()
    assert (await admin.get(f"/admin/keys/{theirs['prefix']}")).json()["status"] == "active"


@pytest.mark.parametrize(("body", "param"), [
    ({"name": "x", "role": "root", "tenant": "t"}, "role"),
    ({"name": "x", "role": "user"}, "tenant"),  # a caller of every tenant must say which
    ({"name": "x", "role": "user", "tenant": "t", "scopes": ["keys:manage"]}, "scopes"),
    ({"name": "x", "role": "user", "tenant": "t", "rpm": -5}, "rpm"),
    ({"name": "x", "role": "user", "tenant": "t", "colour": "red"}, "colour"),
    ({"role": "user", "tenant": "t"}, "name"),
])
async def test_bad_key_requests_are_400s_naming_the_field(admin: httpx.AsyncClient, body: dict, param: str) -> None:
    response = await admin.post("/admin/keys", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


async def test_the_sdk_raises_its_own_classes(app: FastAPI, admin: httpx.AsyncClient) -> None:
    user = await new_key(admin, name="user", role="user", tenant="acme")
    async with serving(app, api_key=user) as sdk:
        with pytest.raises(openai.PermissionDeniedError, match="keys:manage"):
            await sdk.get("http://testserver/admin/keys", cast_to=httpx.Response)
    async with serving(app, api_key="cj_00000000_" + "x" * 43) as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.get("http://testserver/admin/keys", cast_to=httpx.Response)


@pytest.fixture
def moves(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The registry's promote/rollback replaced by recorders (tests/registry tests the real ones)."""
    from changjak import registry

    calls: list[dict] = []

    def promote(settings, version=None, *, actor=None, reason=None, force=False) -> str:
        if version == "404":
            raise RegistryError(f"{settings.model_name} has no version 404", hint="pick another")
        calls.append({"action": "promote", "model": settings.model_name, "version": version, "actor": actor,
                      "reason": reason, "force": force})
        return str(version or 7)

    def rollback(settings, actor, reason) -> str:
        calls.append({"action": "rollback", "model": settings.model_name, "actor": actor, "reason": reason})
        return "6"

    monkeypatch.setattr(registry, "promote", promote)
    monkeypatch.setattr(registry, "rollback", rollback)
    return calls


async def test_an_operator_promotes_and_rolls_back_and_the_cache_is_dropped(
        app: FastAPI, admin: httpx.AsyncClient, moves: list[dict]) -> None:
    invalidated = []
    real = app.state.cache.invalidate

    async def invalidate() -> int:
        invalidated.append(1)
        return await real()

    app.state.cache.invalidate = invalidate
    operator = await new_key(admin, name="release bot", role="operator", tenant="ops")
    prefix = operator[:11]
    promoted = await admin.post("/admin/models/changjak-writer/promote", json={"version": 3, "reason": "better"},
                                **as_key(admin, operator))
    assert promoted.status_code == 200, promoted.text
    assert promoted.json() == {"model": "changjak-writer", "alias": "champion", "version": "3",
                               "action": "promoted", "by": f"release bot ({prefix})"}
    rolled = await admin.post("/admin/models/changjak-writer/rollback", json={"reason": "regression"},
                              **as_key(admin, operator))
    assert rolled.status_code == 200 and rolled.json()["version"] == "6"
    assert [(m["action"], m["model"], m["actor"], m["reason"]) for m in moves] == [
        ("promote", "changjak-writer", f"release bot ({prefix})", "better"),
        ("rollback", "changjak-writer", f"release bot ({prefix})", "regression")]
    assert len(invalidated) == 2


async def test_champion_moves_refused(admin: httpx.AsyncClient, moves: list[dict]) -> None:
    developer = await new_key(admin, name="dev", role="developer", tenant="acme")
    url = "/admin/models/changjak-writer/promote"
    denied = await admin.post(url, json={"reason": "mine"}, **as_key(admin, developer))
    assert denied.status_code == 403 and "models:promote" in denied.json()["error"]["message"]
    no_reason = await admin.post(url, json={"version": 3})
    other_alias = await admin.post(url, json={"version": 3, "alias": "challenger", "reason": "x"})
    missing = await admin.post(url, json={"version": "404", "reason": "x"})
    assert (no_reason.status_code, no_reason.json()["error"]["param"]) == (400, "reason")
    assert (other_alias.status_code, other_alias.json()["error"]["param"]) == (400, "alias")
    assert missing.status_code == 400 and "no version 404" in missing.json()["error"]["message"]
    assert missing.json()["error"]["code"] == "registry_error"
    assert moves == []


async def test_promote_and_rollback_move_the_real_champion(make_settings, tiny_model_dir) -> None:
    from changjak import registry, tracking
    from changjak.backends.inference.fake import FakeBackend
    from changjak.registry.champion import history
    from changjak.serve.app import create_app
    from tests.eval.conftest import log_training_run

    settings = make_settings(api_keys=KEY, base_model={"source": str(tiny_model_dir)})
    versions = [registry.register(settings, run_id=log_training_run(settings, seed=s, eval_passed=True).run_id)
                for s in (1, 2)]
    registry.promote(settings, version=versions[0], actor="setup", reason="first")
    app = create_app(settings, FakeBackend(MODEL))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver",
                               headers={"Authorization": f"Bearer {KEY}"})
    async with app.router.lifespan_context(app), client:
        operator = await new_key(client, name="release", role="operator", tenant="ops")
        url = f"/admin/models/{settings.model_name}"
        promoted = await client.post(f"{url}/promote", json={"reason": "challenger won"}, **as_key(client, operator))
        assert promoted.json()["version"] == versions[1]
        rolled = await client.post(f"{url}/rollback", json={"reason": "complaints"}, **as_key(client, operator))
        assert rolled.json()["version"] == versions[0]
    model = tracking.client(settings).get_registered_model(settings.model_name)
    assert str(model.aliases["champion"]) == versions[0]
    moves = [(e["action"], e["by"], e["reason"]) for e in history(model)][1:]
    assert moves == [("promoted", f"release ({operator[:11]})", "challenger won"),
                     ("rolled_back", f"release ({operator[:11]})", "complaints")]
