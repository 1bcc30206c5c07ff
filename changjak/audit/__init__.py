"""changjak audit verify [--json] · changjak audit tail [-n N]

The gateway's audit trail: one tamper-evident record per request in the app database
(``CHANGJAK_DATABASE_URL``): request id, time, key prefix, principal, tenant, route, model version,
decisions, status, latency and tokens, with secrets and PII masked. ``store`` holds the table and
its hash chain, ``middleware`` writes a record for every request before its answer ends, and
``GET /admin/audit`` (``changjak.serve.routes.audit``) queries it.

``verify`` exits 0 printing the number of intact records, or 1 naming the first broken seq and why
(a changed record, a missing one, a broken link).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from changjak.errors import ChangjakError

if TYPE_CHECKING:
    from changjak.settings import Settings


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class AuditBroken(ChangjakError):
    """``changjak audit verify`` found the chain broken."""


class AuditUnavailable(ChangjakError):
    """A request's record could not be written: its answer must not end (not an APIError: no handler
    may turn it into a response once the answer has started)."""


def main_verify(settings: Settings, *, as_json: bool = False) -> None:
    """Verify the whole chain; raise :class:`AuditBroken` (exit 1) at the first broken record."""
    from changjak import db
    from changjak.audit import store

    engine = db.connect(settings)
    try:
        result = store.verify(engine)
    finally:
        engine.dispose()
    if as_json:
        print(json.dumps(result.to_dict()))
    elif result.ok:
        print(f"audit trail intact: {result.count} records")
    if not result.ok:
        raise AuditBroken(f"audit trail broken at seq {result.seq}: {result.reason} "
                          f"({result.count} records before it are intact)")


def main_tail(settings: Settings, n: int = 20) -> None:
    """Print the last ``n`` records, one JSON object per line."""
    from changjak import db
    from changjak.audit import store

    engine = db.connect(settings)
    try:
        rows = store.tail(engine, n)
    finally:
        engine.dispose()
    for row in rows:
        print(json.dumps(public(row), ensure_ascii=False))


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A stored record as the API and the CLI show it: ISO time, decisions parsed."""
    return {**row, "time": iso_time(row["time"]), "decisions": json.loads(row["decisions"])}


def iso_time(seconds: float) -> str:
    """Unix seconds as ISO 8601 UTC, cut (not rounded) to the microsecond: ``since=`` that time finds it."""
    micro = int(seconds * 1_000_000)
    if micro / 1_000_000 > seconds:
        micro -= 1
    return (_EPOCH + timedelta(microseconds=micro)).isoformat().replace("+00:00", "Z")
