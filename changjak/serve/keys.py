"""Managed API keys: ``changjak keys create|list|revoke`` and ``/admin/keys``, stored in the app database.

A key reads ``cj_<8 hex>_<secret>``: the visible prefix ``cj_<8 hex>`` finds the row, the secret
(``secrets.token_urlsafe(32)``, 256 bits) is never stored: only the SHA-256 of the whole key is,
which is enough for a random key of that entropy (a slow hash only protects guessable passwords).
The whole key is shown once, when it is made.

Serving looks keys up through a small in-process cache keyed by the prefix (never the secret), for
``settings.auth.key_cache_ttl_s`` seconds (default 2): a hot key costs no database round trip, and
a revocation or a new limit takes effect on every replica within that time. Expiry is checked on
every request against the cached row, so it is exact.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from changjak.db import metadata
from changjak.errors import BadRequest, NotFound, Unauthenticated
from changjak.serve.auth import ROLE_SCOPES
from changjak.serve.context import Caller

_MANAGED = re.compile(r"cj_([0-9a-f]{8})_([A-Za-z0-9_-]{20,})")
_PREFIX = re.compile(r"(?:cj_)?([0-9a-f]{8})")
_CACHE_MAX = 10_000
_TENANT = re.compile(r"[A-Za-z0-9._-]{1,64}|\*")

api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("prefix", sa.String(16), primary_key=True),  # "cj_3f9a1c2b", safe to log
    sa.Column("key_hash", sa.String(64), nullable=False),  # sha256 hex of the whole key
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("owner", sa.String(100)),
    sa.Column("tenant", sa.String(64), nullable=False, index=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("scopes", sa.String(500), nullable=False),  # space-separated
    sa.Column("rpm", sa.Integer), sa.Column("tpm", sa.Integer), sa.Column("concurrency", sa.Integer),
    sa.Column("budget", sa.BigInteger),
    sa.Column("created_at", sa.Float, nullable=False),  # unix time
    sa.Column("created_by", sa.String(200)),
    sa.Column("expires_at", sa.Float),
    sa.Column("revoked_at", sa.Float),
)


@dataclass(frozen=True)
class KeyRecord:
    """One stored key, without its secret."""

    prefix: str
    name: str
    owner: str | None
    tenant: str
    role: str
    scopes: tuple[str, ...]
    rpm: int | None
    tpm: int | None
    concurrency: int | None
    budget: int | None
    created_at: float
    created_by: str | None
    expires_at: float | None
    revoked_at: float | None

    @classmethod
    def from_row(cls, row: Any) -> KeyRecord:
        values = dict(row._mapping)
        values.pop("key_hash", None)
        return cls(**{**values, "scopes": tuple(values["scopes"].split())})

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or time.time())

    def to_caller(self) -> Caller:
        return Caller(key_id=self.prefix, name=self.name, role=self.role, tenant=self.tenant,  # type: ignore[arg-type]
                      scopes=frozenset(self.scopes), rpm=self.rpm, tpm=self.tpm, concurrency=self.concurrency,
                      budget=self.budget)

    def public(self) -> dict[str, Any]:
        """What the admin API and ``--json`` show: ISO times, a status."""
        out = asdict(self)
        for name in ("created_at", "expires_at", "revoked_at"):
            out[name] = _iso(out[name])
        out["scopes"] = list(self.scopes)
        out["status"] = "revoked" if self.revoked_at else "expired" if self.expired() else "active"
        return out


_Found = tuple[str, KeyRecord, Caller]  # (hash, record, caller) of one key


class KeyStore:
    """The ``api_keys`` table, with a short-lived lookup cache for serving."""

    def __init__(self, engine: Engine, *, cache_ttl_s: float = 2.0) -> None:
        self.engine, self.cache_ttl_s = engine, cache_ttl_s
        self._cache: dict[str, tuple[float, _Found | None]] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> KeyStore:
        from changjak import db

        return cls(db.connect(settings), cache_ttl_s=settings.auth.key_cache_ttl_s)

    def close(self) -> None:
        self.engine.dispose()

    def create(self, name: str, role: str, tenant: str, *, owner: str | None = None,
               scopes: list[str] | None = None, rpm: int | None = None, tpm: int | None = None,
               concurrency: int | None = None, budget: int | None = None, expires_in_days: float | None = None,
               created_by: str | None = None) -> tuple[str, KeyRecord]:
        """A new key (the whole key, shown only now) and its record."""
        for param, text, required in (("name", name, True), ("owner", owner, False),
                                      ("created_by", created_by, False)):
            if (text is not None or required) and not (text and len(text) <= 100 and text.isprintable()):
                raise BadRequest(f"Invalid '{param}': 1 to 100 printable characters.", param=param,
                                 code="invalid_value")
        if role not in ROLE_SCOPES:
            raise BadRequest(f"Invalid 'role': use one of {', '.join(ROLE_SCOPES)}.", param="role",
                             code="invalid_value")
        if not _TENANT.fullmatch(tenant or ""):
            raise BadRequest("Invalid 'tenant': letters, digits, '.', '_' or '-' (at most 64), or '*'.",
                             param="tenant", code="invalid_value")
        if scopes and (extra := sorted(set(scopes) - ROLE_SCOPES[role])):
            raise BadRequest(f"Invalid 'scopes': role '{role}' cannot hold {', '.join(extra)} "
                             f"(it may have {', '.join(sorted(ROLE_SCOPES[role]))}).", param="scopes",
                             code="invalid_value")
        for param, value in (("rpm", rpm), ("tpm", tpm), ("concurrency", concurrency), ("budget", budget),
                             ("expires_in_days", expires_in_days)):
            if value is not None and value <= 0:
                raise BadRequest(f"Invalid '{param}': must be positive.", param=param, code="invalid_value")
        now = time.time()
        row = {"name": name, "owner": owner, "tenant": tenant, "role": role,
               "scopes": " ".join(sorted(scopes or ROLE_SCOPES[role])), "rpm": rpm, "tpm": tpm,
               "concurrency": concurrency, "budget": budget, "created_at": now, "created_by": created_by,
               "expires_at": now + expires_in_days * 86400 if expires_in_days else None, "revoked_at": None}
        for _ in range(5):  # 32-bit prefixes: a clash is rare, and retried
            prefix = f"cj_{secrets.token_hex(4)}"
            key = f"{prefix}_{secrets.token_urlsafe(32)}"
            try:
                with self.engine.begin() as conn:
                    conn.execute(api_keys.insert().values(prefix=prefix, key_hash=_hash(key), **row))
            except IntegrityError:
                continue
            self._cache.pop(prefix, None)
            return key, self.get(prefix)
        raise RuntimeError("could not find a free key prefix")  # pragma: no cover - 5 clashes in a row

    def list(self, tenant: str | None = None, *, limit: int = 50, offset: int = 0) -> tuple[list[KeyRecord], int]:
        """Keys (of ``tenant``, or all), newest first, and how many there are in all."""
        where = [] if tenant is None else [api_keys.c.tenant == tenant]
        query = (sa.select(api_keys).where(*where).order_by(api_keys.c.created_at.desc(), api_keys.c.prefix)
                 .limit(limit).offset(offset))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
            total = conn.execute(sa.select(sa.func.count()).select_from(api_keys).where(*where)).scalar_one()
        return [KeyRecord.from_row(r) for r in rows], total

    def get(self, prefix: str, tenant: str | None = None) -> KeyRecord:
        """The key with this prefix, seen from ``tenant`` (None: every tenant); 404 when not there."""
        found = self._load(prefix)
        if found is None or (tenant is not None and found[1].tenant != tenant):
            raise NotFound("No API key with that prefix.", param="prefix", code="key_not_found")
        return found[1]

    def revoke(self, prefix: str, tenant: str | None = None) -> KeyRecord:
        """Revoke a key now (this replica at once, the others within the cache TTL)."""
        record = self.get(prefix, tenant)
        if record.revoked_at is None:
            with self.engine.begin() as conn:
                conn.execute(api_keys.update().where(api_keys.c.prefix == record.prefix)
                             .values(revoked_at=time.time()))
        self._cache.pop(record.prefix, None)
        return self.get(record.prefix)

    @staticmethod
    def looks_managed(key: str) -> bool:
        return key.startswith("cj_") and _MANAGED.fullmatch(key) is not None

    async def verify(self, key: str) -> Caller:
        """The caller a presented key stands for; 401 when unknown, revoked or expired."""
        match = _MANAGED.fullmatch(key)
        prefix = f"cj_{match.group(1)}" if match else ""
        now = time.monotonic()
        cached = self._cache.get(prefix)
        if cached is None or now - cached[0] > self.cache_ttl_s:
            found = await asyncio.to_thread(self._lookup, prefix) if match else None
            cached = (now, found)
            if match:
                if len(self._cache) >= _CACHE_MAX:  # a flood of made-up prefixes cannot grow it
                    self._cache.clear()
                self._cache[prefix] = cached
        found = cached[1]
        digest = _hash(key)
        if found is None or not secrets.compare_digest(found[0], digest):
            raise Unauthenticated("Incorrect API key provided.")
        record = found[1]
        if record.revoked_at is not None:
            raise Unauthenticated("This API key has been revoked.", code="revoked_api_key")
        if record.expired():
            raise Unauthenticated("This API key has expired; ask an admin for a new one.", code="expired_api_key")
        return found[2]  # built once per lookup: a hot key costs a hash and a compare

    def _lookup(self, prefix: str) -> _Found | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.prefix == prefix)).first()
        if row is None:
            return None
        record = KeyRecord.from_row(row)
        return row.key_hash, record, record.to_caller()

    def _load(self, prefix: str) -> _Found | None:
        match = _PREFIX.fullmatch(prefix or "")
        return self._lookup(f"cj_{match.group(1)}") if match else None


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")
