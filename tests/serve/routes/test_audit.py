"""GET /admin/audit: filters, seq cursor paging, audit:read, and tenants kept apart."""

from __future__ import annotations

import httpx
import pytest

from tests.serve.conftest import MODEL

pytestmark = pytest.mark.anyio
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "안녕"}]}


async def new_key(admin: httpx.AsyncClient, role: str, tenant: str) -> dict:
    made = await admin.post("/admin/keys", json={"name": f"{role}-{tenant}", "role": role, "tenant": tenant})
    assert made.status_code == 201, made.text
    return {"Authorization": f"Bearer {made.json()['key']}"}


async def audit(client: httpx.AsyncClient, headers: dict | None = None, **params) -> httpx.Response:
    return await client.get("/admin/audit", params=params, headers=headers)


async def test_filters_and_cursor_paging(admin: httpx.AsyncClient) -> None:
    for i in range(5):
        await admin.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": f"page-{i}"})
    await admin.get("/v1/models", headers={"X-Request-Id": "models-1"})
    chats = (await audit(admin, route="/v1/chat/completions", status=200)).json()
    assert [r["request_id"] for r in chats["data"]] == [f"page-{i}" for i in range(5)]
    first = (await audit(admin, route="/v1/chat/completions", limit=2)).json()
    assert first["has_more"] and len(first["data"]) == 2
    second = (await audit(admin, route="/v1/chat/completions", limit=2, after=first["next_after"])).json()
    assert [r["request_id"] for r in second["data"]] == ["page-2", "page-3"]
    found = (await audit(admin, request_id="models-1")).json()["data"]
    assert [(r["method"], r["route"], r["status"]) for r in found] == [("GET", "/v1/models", 200)]
    record = chats["data"][0]
    assert record["time"].endswith("Z") and len(record["hash"]) == 64 and isinstance(record["decisions"], dict)
    since = record["time"]
    assert len((await audit(admin, since=since, route="/v1/chat/completions")).json()["data"]) == 5
    assert (await audit(admin, until=since)).json()["data"] == []
    assert (await audit(admin, since="2999-01-01T00:00:00")).json()["data"] == []


@pytest.mark.parametrize("params", [{"limit": 501}, {"limit": 0}, {"after": -1}, {"after": 2**64},
                                    {"since": "yesterday"}, {"until": "nan"}, {"status": 42}, {"tenant": "a\x00b"}])
async def test_bad_parameters_are_400s_naming_them(admin: httpx.AsyncClient, params: dict) -> None:
    response = await audit(admin, **params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == next(iter(params))


async def test_only_audit_readers_may_read(admin: httpx.AsyncClient) -> None:
    for role in ("operator", "developer", "user"):
        response = await audit(admin, await new_key(admin, role, "acme"))
        assert (response.status_code, response.json()["error"]["type"]) == (403, "permission_error")
    assert (await admin.get("/admin/audit", headers={"Authorization": ""})).status_code == 401


async def test_a_tenant_admin_sees_its_own_tenant_only(admin: httpx.AsyncClient) -> None:
    acme, globex = await new_key(admin, "admin", "acme"), await new_key(admin, "admin", "globex")
    acme_user = await new_key(admin, "user", "acme")
    await admin.post("/v1/chat/completions", json=CHAT, headers={**acme_user, "X-Request-Id": "acme-chat"})
    await admin.get("/v1/models", headers={**globex, "X-Request-Id": "globex-models"})

    seen = (await audit(admin, acme)).json()["data"]
    assert {r["tenant"] for r in seen} == {"acme"} and "acme-chat" in {r["request_id"] for r in seen}
    assert {r["tenant"] for r in (await audit(admin, globex)).json()["data"]} == {"globex"}
    foreign = await audit(admin, acme, request_id="globex-models")
    missing = await audit(admin, acme, request_id="no-such-request")
    assert foreign.content == missing.content == b'{"object":"list","data":[],"has_more":false,"next_after":null}'
    assert (await audit(admin, acme, tenant="globex")).content == missing.content
    everyone = {r["tenant"] for r in (await audit(admin, limit=500)).json()["data"]}
    assert {"acme", "globex", "*"} <= everyone
