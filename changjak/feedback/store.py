"""The ``feedback`` table: ratings and corrections of answers, and their review.

    from changjak.feedback import store
    item = store.add(engine, tenant="acme", key_prefix="cj_3f9a", principal="writer-app",
                     request_id="req_...", rating=1, correction="...", comment=None, safety={...})
    store.get(engine, item["id"]);  store.list_(engine, tenant="acme", key_prefix=None, status="pending")
    store.review(engine, item["id"], status="accepted", reviewer="ops", note=None)

Texts arrive here already checked and masked by the safety policy (the route does it); this
module only stores and finds. Who may see which row is the route's business (tenant and key).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Column, Double, Index, Integer, String, Table, Text, select
from sqlalchemy.engine import Engine

from changjak.db import metadata

STATUSES = ("pending", "accepted", "rejected")
feedback = Table(
    "feedback", metadata,
    Column("id", String(40), primary_key=True),  # fb_<hex>
    Column("time", Double, nullable=False),  # unix seconds
    Column("tenant", String(200), nullable=False),
    Column("key_prefix", String(64), nullable=False),  # whose feedback: the key's visible prefix
    Column("principal", String(200)),  # the key's name
    Column("request_id", String(128)),  # X-Request-Id of the answer rated (its audit record)
    Column("completion_id", String(128)),  # chatcmpl-... of the answer rated
    Column("rating", Integer),  # -1 / +1 (thumbs) or 1..5 (stars)
    Column("messages", Text),  # JSON: the conversation that led to the answer, masked (optional)
    Column("correction", Text),  # the answer as it should have been, masked
    Column("comment", Text),  # masked
    Column("safety", Text, nullable=False),  # JSON: the policy's verdict summaries, no text
    Column("status", String(16), nullable=False),  # pending | accepted | rejected
    Column("reviewed_by", String(200)),
    Column("reviewed_at", Double),
    Column("review_note", Text),
    Index("ix_feedback_tenant_status", "tenant", "status"),
    Index("ix_feedback_key_prefix", "key_prefix"),
)


def add(engine: Engine, *, tenant: str, key_prefix: str, principal: str | None, request_id: str | None,
        completion_id: str | None, rating: int | None, messages: list[dict[str, str]] | None,
        correction: str | None, comment: str | None, safety: list[dict[str, Any]]) -> dict[str, Any]:
    """Store one piece of feedback (status ``pending``); the stored row."""
    row = {"id": f"fb_{uuid.uuid4().hex}", "time": time.time(), "tenant": tenant, "key_prefix": key_prefix,
           "principal": principal, "request_id": request_id, "completion_id": completion_id, "rating": rating,
           "messages": json.dumps(messages, ensure_ascii=False) if messages else None,
           "correction": correction, "comment": comment, "safety": json.dumps(safety, ensure_ascii=False),
           "status": "pending", "reviewed_by": None, "reviewed_at": None, "review_note": None}
    with engine.begin() as conn:
        conn.execute(feedback.insert().values(**row))
    return row


def get(engine: Engine, feedback_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(feedback).where(feedback.c.id == feedback_id)).first()
    return dict(row._mapping) if row else None


def list_(engine: Engine, *, tenant: str | None, key_prefix: str | None = None, status: str | None = None,
          request_id: str | None = None, after_time: float | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Rows matching every filter given (None: any), newest first; ``after_time`` pages backwards."""
    stmt = select(feedback)
    for column, value in (("tenant", tenant), ("key_prefix", key_prefix), ("status", status),
                          ("request_id", request_id)):
        if value is not None:
            stmt = stmt.where(feedback.c[column] == value)
    if after_time is not None:
        stmt = stmt.where(feedback.c.time < after_time)
    with engine.connect() as conn:
        rows = conn.execute(stmt.order_by(feedback.c.time.desc(), feedback.c.id).limit(limit)).all()
    return [dict(row._mapping) for row in rows]


def review(engine: Engine, feedback_id: str, *, status: str, reviewer: str, note: str | None) -> dict[str, Any]:
    """Set the review outcome of one row; the updated row."""
    if status not in STATUSES:
        raise ValueError(f"unknown review status {status!r}")
    with engine.begin() as conn:
        conn.execute(feedback.update().where(feedback.c.id == feedback_id).values(
            status=status, reviewed_by=reviewer, reviewed_at=time.time(), review_note=note))
        row = conn.execute(select(feedback).where(feedback.c.id == feedback_id)).one()
    return dict(row._mapping)


def accepted_corrections(engine: Engine, *, tenant: str | None = None) -> Iterator[dict[str, Any]]:
    """Accepted rows that carry a correction, oldest first (the SFT export)."""
    stmt = select(feedback).where(feedback.c.status == "accepted", feedback.c.correction.is_not(None))
    if tenant is not None:
        stmt = stmt.where(feedback.c.tenant == tenant)
    with engine.connect() as conn:
        for row in conn.execute(stmt.order_by(feedback.c.time)):
            yield dict(row._mapping)
