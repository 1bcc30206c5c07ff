"""The admin API: API keys (keys:manage) and the model lifecycle (models:promote).

    POST   /admin/keys                      {name, role, tenant?, ...} -> the key, shown only here
    GET    /admin/keys?limit=&offset=&tenant=
    GET    /admin/keys/{prefix}
    DELETE /admin/keys/{prefix}             revoke (every replica within settings.auth.key_cache_ttl_s)
    POST   /admin/models/{name}/promote     {version?, alias?, reason, force?}
    POST   /admin/models/{name}/rollback    {alias?, reason}

A caller of tenant ``*`` manages every tenant's keys; any other admin only its own tenant's, and a
key of another tenant answers 404 like a missing one. Keys of tenant ``*`` are made with the CLI only.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from changjak.errors import BadRequest, PermissionDenied, RegistryError
from changjak.registry.versions import CHAMPION
from changjak.serve.auth import ALL_TENANTS, KeyManager, ModelPromoter, tenant_filter
from changjak.serve.context import Caller
from changjak.serve.deps import SettingsDep, opened
from changjak.serve.keys import KeyStore

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/admin", tags=["admin"])


async def get_key_store(request: Request) -> KeyStore:
    return opened(request, "key_store", what="The key store", code="key_store_not_ready")


Keys = Annotated[KeyStore, Depends(get_key_store)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyCreate(_Body):
    name: str = Field(min_length=1, max_length=100)
    role: str
    tenant: str | None = None  # default: the caller's own
    owner: str | None = Field(None, max_length=100)
    scopes: list[str] | None = None  # default: all of the role's
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    budget: int | None = None
    expires_in_days: float | None = None


class Promote(_Body):
    version: str | int | None = None  # default: the challenger
    alias: str = CHAMPION
    reason: str = Field(min_length=1, max_length=500)
    force: bool = False  # promote despite a failed gate (recorded)


class Rollback(_Body):
    alias: str = CHAMPION
    reason: str = Field(min_length=1, max_length=500)


@router.post("/keys", status_code=201)
async def create_key(body: KeyCreate, caller: KeyManager, keys: Keys) -> dict[str, Any]:
    """Make a key; the response is the only place its secret ever appears."""
    tenant = body.tenant or (None if caller.tenant == ALL_TENANTS else caller.tenant)
    if tenant is None:
        raise BadRequest("Missing required parameter: 'tenant'.", param="tenant", code="missing_required_parameter")
    if tenant == ALL_TENANTS:
        raise PermissionDenied("Keys of every tenant ('*') are made only with `changjak keys create`.",
                               code="cli_only")
    if tenant_filter(caller) not in (None, tenant):
        raise PermissionDenied("You can make keys only for your own tenant.", code="foreign_tenant")
    fields = body.model_dump(exclude={"name", "role", "tenant"})
    key, record = await asyncio.to_thread(keys.create, body.name, body.role, tenant, created_by=caller.key_id,
                                          **fields)
    return {"key": key, **record.public()}


@router.get("/keys")
async def list_keys(caller: KeyManager, keys: Keys, limit: Annotated[int, Query(ge=1, le=200)] = 50,
                    offset: Annotated[int, Query(ge=0, le=2**62)] = 0, tenant: str | None = None) -> dict[str, Any]:
    """The keys this caller may see, newest first, a page at a time."""
    own = tenant_filter(caller)
    if own is not None and tenant not in (None, own):
        return {"object": "list", "data": [], "total": 0, "has_more": False}
    records, total = await asyncio.to_thread(keys.list, own or tenant, limit=limit, offset=offset)
    return {"object": "list", "data": [r.public() for r in records], "total": total,
            "has_more": offset + len(records) < total}


@router.get("/keys/{prefix}")
async def get_key(prefix: str, caller: KeyManager, keys: Keys) -> dict[str, Any]:
    """One key, without its secret."""
    return (await asyncio.to_thread(keys.get, prefix, tenant_filter(caller))).public()


@router.delete("/keys/{prefix}")
async def revoke_key(prefix: str, caller: KeyManager, keys: Keys) -> dict[str, Any]:
    """Revoke a key: refused here at once, on the other replicas within the key cache TTL."""
    return (await asyncio.to_thread(keys.revoke, prefix, tenant_filter(caller))).public()


@router.post("/models/{name}/promote")
async def promote(name: str, body: Promote, caller: ModelPromoter, settings: SettingsDep,
                  request: Request) -> dict[str, Any]:
    """Move the champion alias to a version (default: the challenger); who and why are recorded."""
    from changjak import registry

    _champion_only(body.alias)
    version = await _registry(registry.promote, settings.model_copy(update={"model_name": name}),
                              version=body.version, actor=_actor(caller), reason=body.reason, force=body.force)
    await _invalidate(request)
    return {"model": name, "alias": CHAMPION, "version": version, "action": "promoted", "by": _actor(caller)}


@router.post("/models/{name}/rollback")
async def rollback(name: str, body: Rollback, caller: ModelPromoter, settings: SettingsDep,
                   request: Request) -> dict[str, Any]:
    """Move the champion alias back to the version it replaced."""
    from changjak import registry

    _champion_only(body.alias)
    version = await _registry(registry.rollback, settings.model_copy(update={"model_name": name}),
                              actor=_actor(caller), reason=body.reason)
    await _invalidate(request)
    return {"model": name, "alias": CHAMPION, "version": version, "action": "rolled_back", "by": _actor(caller)}


def _champion_only(alias: str) -> None:
    if alias != CHAMPION:
        raise BadRequest(f"Invalid 'alias': only '{CHAMPION}' is moved here.", param="alias", code="invalid_value")


def _actor(caller: Caller) -> str:
    return f"{caller.name} ({caller.key_id})"


async def _registry(func: Any, *args: Any, **kwargs: Any) -> str:
    try:
        return await asyncio.to_thread(func, *args, **kwargs)
    except RegistryError as e:  # what the CLI says, as a 400 the client can act on
        raise BadRequest(str(e), code="registry_error") from None


async def _invalidate(request: Request) -> None:
    """Answers cached for the old champion must not outlive it; the served model follows the alias."""
    if (cache := getattr(request.app.state, "cache", None)) is not None:
        await cache.invalidate()
    from changjak.serve import follow

    try:
        await follow.follow(request.app)
    except Exception:  # the move is made; this replica catches up on its next poll
        logger.warning("the alias moved but this server could not follow it yet", exc_info=True)
