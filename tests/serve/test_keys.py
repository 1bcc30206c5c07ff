"""The key store on SQLite and on the real PostgreSQL: create, list, revoke, expiry, hash-only storage."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from changjak.errors import BadRequest, NotFound, Unauthenticated
from changjak.serve.auth import ROLE_SCOPES
from changjak.serve.keys import KeyStore, api_keys


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, make_settings) -> Iterator[KeyStore]:
    db = {} if request.param == "sqlite" else {"database_url": request.getfixturevalue("postgres_url")}
    keys = KeyStore.from_settings(make_settings(**db))
    yield keys
    keys.close()


@pytest.fixture
def tenant() -> str:
    """A tenant of this test's own, so parallel runs on the shared PostgreSQL never see each other."""
    return f"t-{uuid.uuid4().hex[:10]}"


def verify(store: KeyStore, key: str):
    return asyncio.run(store.verify(key))


def test_a_new_key_is_shown_once_and_works(store: KeyStore, tenant: str) -> None:
    key, record = store.create("ci bot", "developer", tenant, owner="minji", rpm=60, tpm=1000, concurrency=2,
                               budget=10**6, created_by="test")
    prefix, secret = key[:11], key[12:]
    assert key.startswith("cj_") and key[11] == "_" and record.prefix == prefix and len(secret) >= 40
    assert (record.role, record.tenant, record.owner, record.revoked_at) == ("developer", tenant, "minji", None)
    assert set(record.scopes) == ROLE_SCOPES["developer"]
    caller = verify(store, key)
    assert (caller.key_id, caller.name, caller.role, caller.tenant) == (prefix, "ci bot", "developer", tenant)
    assert (caller.rpm, caller.tpm, caller.concurrency, caller.budget) == (60, 1000, 2, 10**6)
    assert "key" not in record.public() and record.public()["status"] == "active"
    with pytest.raises(Unauthenticated, match="Incorrect API key"):
        verify(store, f"{prefix}_{'x' * 43}")  # the right prefix, a wrong secret


def test_only_the_hash_is_stored(store: KeyStore, tenant: str, tmp_path: Path) -> None:
    key, record = store.create("hash check", "user", tenant)
    secret = key.split("_", 2)[2]
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(api_keys)).all()
    assert secret not in repr(rows) and key not in repr(rows)
    assert record.prefix in repr(rows)
    if store.engine.url.get_backend_name() == "sqlite":  # and nowhere in the files, WAL included
        for path in tmp_path.rglob("app.db*"):
            assert secret.encode() not in path.read_bytes()


def test_list_is_per_tenant_and_paged(store: KeyStore, tenant: str) -> None:
    made = [store.create(f"k{i}", "user", tenant)[1].prefix for i in range(3)]
    other = store.create("other", "user", tenant + "-other")[1].prefix
    page, total = store.list(tenant, limit=2)
    rest, _ = store.list(tenant, limit=2, offset=2)
    assert total == 3 and len(page) == 2 and len(rest) == 1
    assert {r.prefix for r in page + rest} == set(made)
    everything = {r.prefix for r in store.list(None, limit=10_000)[0]}
    assert set(made) | {other} <= everything


def test_revoked_keys_are_refused_at_once_here(store: KeyStore, tenant: str) -> None:
    key, record = store.create("to revoke", "user", tenant)
    verify(store, key)  # cached now
    revoked = store.revoke(record.prefix.removeprefix("cj_"), tenant)  # the bare hex works too
    assert revoked.revoked_at is not None and revoked.public()["status"] == "revoked"
    with pytest.raises(Unauthenticated, match="revoked"):
        verify(store, key)


def test_another_replica_sees_a_revocation_within_the_ttl(store: KeyStore, tenant: str) -> None:
    replica = KeyStore(store.engine, cache_ttl_s=0.2)
    key, record = store.create("shared", "user", tenant)
    verify(replica, key)
    store.revoke(record.prefix)
    verify(replica, key)  # still cached on the other replica ...
    asyncio.run(asyncio.sleep(0.25))
    with pytest.raises(Unauthenticated, match="revoked"):  # ... but not beyond the TTL
        verify(replica, key)


def test_expired_keys_say_so(store: KeyStore, tenant: str) -> None:
    key, record = store.create("short-lived", "user", tenant, expires_in_days=1)
    assert record.expires_at is not None and verify(store, key)
    with store.engine.begin() as conn:
        conn.execute(api_keys.update().where(api_keys.c.prefix == record.prefix).values(expires_at=1.0))
    store._cache.clear()
    with pytest.raises(Unauthenticated, match="expired") as caught:
        verify(store, key)
    assert caught.value.code == "expired_api_key"
    assert store.get(record.prefix).public()["status"] == "expired"


def test_a_foreign_key_answers_like_a_missing_one(store: KeyStore, tenant: str) -> None:
    record = store.create("mine", "user", tenant)[1]
    with pytest.raises(NotFound) as foreign:
        store.get(record.prefix, tenant + "-other")
    with pytest.raises(NotFound) as missing:
        store.get("cj_00000000", tenant)
    assert foreign.value.to_dict() == missing.value.to_dict()
    with pytest.raises(NotFound):
        store.revoke(record.prefix, tenant + "-other")
    assert store.get(record.prefix, tenant).revoked_at is None


@pytest.mark.parametrize(("field", "value"), [
    ("name", ""), ("name", "a\nb"), ("role", "root"), ("tenant", "a b"), ("tenant", ""), ("scopes", ["keys:manage"]),
    ("rpm", 0), ("budget", -1), ("expires_in_days", 0), ("owner", "x" * 101),
])
def test_bad_input_names_the_field(store: KeyStore, field: str, value) -> None:
    args = {"name": "ok", "role": "user", "tenant": "t", field: value}
    with pytest.raises(BadRequest) as caught:
        store.create(args.pop("name"), args.pop("role"), args.pop("tenant"), **args)
    assert caught.value.param == field


def test_narrower_scopes_are_kept(store: KeyStore, tenant: str) -> None:
    key, record = store.create("reader", "developer", tenant, scopes=["models:read"])
    assert record.scopes == ("models:read",) and verify(store, key).scopes == frozenset({"models:read"})


def test_made_up_keys_are_refused_without_growing_the_cache(store: KeyStore) -> None:
    for key in ("cj_zz_nothex", "cj_0123abcd_short", "sk-other", ""):
        with pytest.raises(Unauthenticated):
            verify(store, key)
    assert "" not in store._cache and len(store._cache) <= 1
