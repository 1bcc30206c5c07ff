"""GET /admin/audit: the audit trail, filtered and paged (scope ``audit:read``).

    GET /admin/audit?tenant=&key_prefix=&route=&status=&since=&until=&request_id=&model_version=
                    &after=<seq>&limit=<1..500>

Oldest first; ``next_after`` is the cursor of the next page (``after=next_after``) while
``has_more``. ``since``/``until`` take ISO 8601 or unix seconds. A caller of tenant ``*`` sees every
tenant; any other only its own, and asking for another tenant's records finds none, exactly as
for a tenant that has none.
"""

from __future__ import annotations

import asyncio
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from sqlalchemy.engine import Engine

from changjak.audit import public, store
from changjak.errors import BadRequest
from changjak.serve.auth import AuditReader, tenant_filter
from changjak.serve.deps import opened

router = APIRouter(prefix="/admin", tags=["audit"])
_BAD_TEXT = re.compile(r"[\x00\ud800-\udfff]")


async def get_db(request: Request) -> Engine:
    """The app database engine (built in the lifespan)."""
    return opened(request, "db", what="The app database", code="database_not_ready")


Database = Annotated[Engine, Depends(get_db)]


class AuditRecord(BaseModel):
    seq: int
    request_id: str
    time: str  # ISO 8601, UTC
    key_prefix: str | None
    principal: str | None
    tenant: str | None
    method: str
    route: str | None
    model_version: str | None
    decisions: dict[str, Any]
    status: int | None
    outcome: str
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    object: str = "list"
    data: list[AuditRecord]
    has_more: bool
    next_after: int | None


@router.get("/audit")
async def list_audit(caller: AuditReader, engine: Database,
                     tenant: str | None = None, key_prefix: str | None = None, route: str | None = None,
                     status: Annotated[int | None, Query(ge=100, le=599)] = None,
                     since: str | None = None, until: str | None = None, request_id: str | None = None,
                     model_version: str | None = None, after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
                     limit: Annotated[int, Query(ge=1, le=500)] = 100) -> AuditPage:
    """Audit records matching every filter, oldest first, ``limit`` at a time after seq ``after``."""
    for param, value in (("tenant", tenant), ("key_prefix", key_prefix), ("route", route),
                         ("request_id", request_id), ("model_version", model_version)):
        if value is not None and _BAD_TEXT.search(value):
            raise BadRequest(f"Invalid '{param}': NUL bytes and lone surrogates are not allowed.", param=param,
                             code="invalid_value")
    own = tenant_filter(caller)
    if own is not None:
        if tenant is not None and tenant != own:
            return AuditPage(data=[], has_more=False, next_after=None)
        tenant = own
    rows = await asyncio.to_thread(
        store.query, engine, after=after, limit=limit + 1, since=_when(since, "since"), until=_when(until, "until"),
        status=status, tenant=tenant, key_prefix=key_prefix, route=route, request_id=request_id,
        model_version=model_version)
    page = [AuditRecord(**public(row)) for row in rows[:limit]]
    more = len(rows) > limit
    return AuditPage(data=page, has_more=more, next_after=page[-1].seq if more else None)


def _when(value: str | None, param: str) -> float | None:
    """ISO 8601 (naive = UTC) or unix seconds -> unix seconds."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds):
            return seconds
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"Invalid '{param}': use ISO 8601 (2026-12-01T09:00:00Z) or unix seconds.",
                         param=param, code="invalid_value") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
