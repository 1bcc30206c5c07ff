"""The audit table and its hash chain: append records in order, verify them, query them.

    from changjak.audit import store
    store.append(engine, [entry, ...])        # one transaction, under the chain lock
    result = store.verify(engine)             # result.ok, result.count, result.seq, result.reason
    store.query(engine, tenant="acme", after=120, limit=100)

Each record carries ``prev_hash`` (the hash of the record before it) and ``hash`` =
sha256(prev_hash + canonical JSON of its fields), so editing, deleting or inserting a row breaks
the chain at that ``seq``. ``seq`` is assigned under a lock on the one-row ``audit_chain`` table
(``SELECT ... FOR UPDATE`` on PostgreSQL; the first write takes SQLite's database write lock), so
several gateway processes writing to one database still make one linear chain. The chain head also
records the last seq and hash, so cutting records off the end is caught too.

Every string is masked for PII (``SafetyEngine.mask_for_log``) and has CR/LF and other control
characters escaped before it is hashed and stored (:func:`clean_entry`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import marshal
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Column, Double, Index, Integer, String, Table, Text, func, select
from sqlalchemy.engine import Connection, Engine

from changjak.db import metadata

logger = logging.getLogger(__name__)

GENESIS = "0" * 64  # prev_hash of the first record
records = Table(
    "audit_records", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("request_id", String(128), nullable=False),
    Column("time", Double, nullable=False),  # unix seconds when the request arrived
    Column("key_prefix", String(64)),  # the key's visible prefix, never the key
    Column("principal", String(200)),  # the key's name; null when unauthenticated
    Column("tenant", String(200)),
    Column("method", String(16), nullable=False),
    Column("route", String(300)),  # the route template (/v1/feedback/{feedback_id}); null when none matched
    Column("model_version", String(100)),
    Column("decisions", Text, nullable=False),  # canonical JSON
    Column("status", Integer),
    Column("outcome", String(16), nullable=False),  # complete | disconnected | error | cancelled
    Column("latency_ms", Double, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_records_request_id", "request_id"),
    Index("ix_audit_records_tenant_seq", "tenant", "seq"),
)
chain = Table(
    "audit_chain", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)
HASHED = ("seq", "request_id", "time", "key_prefix", "principal", "tenant", "method", "route", "model_version",
          "decisions", "status", "outcome", "latency_ms", "prompt_tokens", "completion_tokens")
_LIMITS = {c.name: c.type.length for c in records.columns if isinstance(c.type, String) and c.type.length}
_ESCAPES = {**{c: f"\\x{c:02x}" for c in [*range(0x20), 0x7f, *range(0x80, 0xa0)]},
            ord("\r"): "\\r", ord("\n"): "\\n", ord("\t"): "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029",
            ord("\\"): "\\\\"}


_OWN_ID = re.compile(r"req_[0-9a-f]{32}")  # ids the gateway made itself (random hex): nothing to mask


def escape(text: str) -> str:
    """``text`` on one line: CR, LF, tabs, control characters and line separators written as escapes."""
    return text.translate(_ESCAPES)


class Cleaner:
    """Masks PII (``mask``) and escapes one string, remembering recent answers: routes, tenants, names
    and decision words repeat in every record, so most strings cost one dict lookup."""

    def __init__(self, mask: Callable[[str], str], size: int = 8192) -> None:
        self.mask, self.size, self.seen = mask, size, {}
        self.trees: dict[bytes, str] = {}  # marshal bytes of a decisions tree -> its cleaned canonical JSON

    def __call__(self, text: str) -> str:
        if (hit := self.seen.get(text)) is not None:
            return hit
        if len(self.seen) >= self.size:
            self.seen.clear()
        self.seen[text] = clean = escape(self.mask(text))
        return clean

    def once(self, text: str) -> str:
        """For a string that will not come again (a request id): not remembered."""
        return self.seen.get(text) or escape(self.mask(text))

    def canonical(self, value: Any, build: Callable[[Any], str]) -> str:
        """``build(value)``, remembered for values made of builtin types only (most decisions repeat).

        The key is ``marshal.dumps(value, 2)``: it takes exact dicts, lists, tuples, sets, strings, numbers,
        bools and None (anything else, a subclass too, raises) and is lossless, so equal bytes mean an
        equal value (1, 1.0 and True stay apart), whose cleaned form is then the same. Version 2 has no
        back-references, whose use depends on reference counts: the same value gives the same bytes.
        """
        try:
            key = marshal.dumps(value, 2)
        except ValueError:  # another type somewhere: cleaned every time
            return build(value)
        if (hit := self.trees.get(key)) is not None:
            return hit
        if len(self.trees) >= self.size:
            self.trees.clear()
        self.trees[key] = clean = build(value)
        return clean


def clean_entry(entry: dict[str, Any], mask: Callable[[str], str]) -> dict[str, Any]:
    """The row for ``entry``: strings masked and escaped (and cut to their column), decisions as canonical JSON.

    ``mask`` is a :class:`Cleaner` (fast) or any str -> str masking function.
    """
    text = mask if isinstance(mask, Cleaner) else Cleaner(mask)

    def tree(value: Any) -> Any:
        kind = type(value)
        if kind is str:
            return text(value)
        if value is None or kind is bool or kind is int:
            return value
        if kind is float:
            return value if math.isfinite(value) else str(value)
        if isinstance(value, dict):
            return {text(k if type(k) is str else str(k)): tree(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [tree(v) for v in value]
        return text(str(value))

    row = {}
    for name in HASHED[1:]:
        value = entry.get(name)
        if name == "decisions":
            value = text.canonical(value or {}, lambda v: canonical(tree(v)))
        elif name == "request_id":
            value = value if _OWN_ID.fullmatch(value) else text.once(value)[:_LIMITS[name]]
        elif isinstance(value, str):
            value = text(value)[:_LIMITS.get(name, len(value))]
        row[name] = value
    row["time"] = float(row["time"])
    row["latency_ms"] = round(float(row["latency_ms"] or 0.0), 3)
    row["prompt_tokens"], row["completion_tokens"] = int(row["prompt_tokens"] or 0), int(row["completion_tokens"] or 0)
    return row


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def digest(prev_hash: str, row: Any) -> str:
    """The hash of a record: sha256 of the previous hash and the canonical JSON of its fields."""
    fields = {name: row[name] for name in HASHED}
    return hashlib.sha256((prev_hash + canonical(fields)).encode("utf-8")).hexdigest()


def append(engine: Engine, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Append cleaned rows (see :func:`clean_entry`) in one transaction; their seqs, in order."""
    if not rows:
        return []
    sql = _driver_sql(engine.dialect.name, engine.dialect.paramstyle)
    with engine.begin() as conn:
        seq, prev = _lock_head(conn) if sql is None else _lock_head_fast(conn, sql)
        stored = _chained(rows, seq, prev)
        if sql is None:
            conn.execute(records.insert(), stored)
            conn.execute(chain.update().where(chain.c.id == 1).values(seq=stored[-1]["seq"], hash=stored[-1]["hash"]))
        else:  # plain driver statements: SQLAlchemy's per-statement build cost ~0.7 ms a batch
            conn.exec_driver_sql(sql["insert"], [tuple(r[c] for c in _COLUMNS) for r in stored])
            conn.exec_driver_sql(sql["advance"], (stored[-1]["seq"], stored[-1]["hash"]))
    return [row["seq"] for row in stored]


def _chained(rows: Sequence[dict[str, Any]], seq: int, prev: str) -> list[dict[str, Any]]:
    """``rows`` numbered after ``seq`` and hash-chained after ``prev``."""
    stored = []
    for row in rows:
        seq += 1
        full = {**row, "seq": seq, "prev_hash": prev}
        full["hash"] = prev = digest(prev, full)
        stored.append(full)
    return stored


class Busy(Exception):
    """Another writer held SQLite's write lock longer than the append would wait."""


class Appender:
    """:func:`append` over one database connection of its own, for the audit writer's single thread.

    On SQLite and PostgreSQL it runs the same statements, in one transaction under the same chain
    lock, straight on the driver's connection: SQLAlchemy's pool checkout and reset, transaction
    objects and statement wrapping cost ~0.3 ms of CPU a batch (measured on SQLite: 0.42 ms a
    one-record batch through them, 0.12 ms without), and the event loop waits for that GIL time.
    A batch that fails is rolled back and its connection dropped: the next batch opens a new one.
    Other databases go through :func:`append`. Not thread-safe: one caller at a time.
    """

    CHECKPOINT_EVERY = 250  # commits (~4 pages of log each at one record): about SQLite's own 1,000 pages
    RESTART_PAGES = 4_000  # log frames (~16 MB) past which a checkpoint waits for other processes' writers

    def __init__(self, engine: Engine, *, own_checkpoints: bool = False) -> None:
        self.engine = engine
        self.sql = _driver_sql(engine.dialect.name, engine.dialect.paramstyle)
        database = engine.url.database or ""
        self.own_checkpoints = (own_checkpoints and self.local  # see checkpoint(): a file's log only
                                and database not in ("", ":memory:") and "mode=memory" not in str(engine.url))
        self._pooled: Any = None  # SQLAlchemy's proxy, given back to the pool on close()
        self._driver: Any = None  # the DB-API connection under it
        self._wait_ms: int | None = None  # the busy timeout set on it (SQLite)
        self.commits = 0  # transactions committed
        self.checkpointed_at = 0  # ``commits`` at the last checkpoint
        self.log_pages = 0  # frames in the log at the last checkpoint

    @property
    def local(self) -> bool:
        """Whether the database is a local file (SQLite): an append is then ~0.1 ms of CPU, no network."""
        return self.engine.dialect.name == "sqlite" and self.sql is not None

    def __call__(self, rows: Sequence[dict[str, Any]], *, wait_ms: int = 30_000) -> list[int]:
        """Append ``rows``; on SQLite, :class:`Busy` if another writer holds the lock past ``wait_ms``."""
        if not rows:
            return []
        if self.sql is None:
            return append(self.engine, rows)
        sql, conn = self.sql, self._connection()
        try:
            cursor = conn.cursor()
            if sql["begin"]:  # SQLite
                if wait_ms != self._wait_ms:
                    cursor.execute(f"PRAGMA busy_timeout={int(wait_ms)}")
                    self._wait_ms = wait_ms
                try:
                    cursor.execute(sql["begin"])
                except Exception as e:
                    if getattr(e, "sqlite_errorcode", None) == 5:  # SQLITE_BUSY: nothing begun, nothing lost
                        raise Busy from e
                    raise
            cursor.execute(sql["ensure"], (GENESIS,))
            cursor.execute(sql["head"])
            seq, prev = cursor.fetchone()
            stored = _chained(rows, int(seq), prev)
            cursor.executemany(sql["insert"], [tuple(r[c] for c in _COLUMNS) for r in stored])
            cursor.execute(sql["advance"], (stored[-1]["seq"], stored[-1]["hash"]))
            conn.commit()
            self.commits += 1
        except Busy:  # nothing begun: the connection is fine
            raise
        except BaseException:
            self.close(failed=True)
            raise
        return [row["seq"] for row in stored]

    def _connection(self) -> Any:
        if self._driver is None:
            self._pooled = self.engine.raw_connection()
            self._driver = self._pooled.driver_connection
            if self.own_checkpoints:  # a commit never copies the log back (and waits for fsync) itself
                self._driver.execute("PRAGMA wal_autocheckpoint=0")
        return self._driver

    @property
    def checkpoint_due(self) -> bool:
        return self.own_checkpoints and self.commits - self.checkpointed_at >= self.CHECKPOINT_EVERY

    def checkpoint(self) -> tuple[int, int, int]:
        """Copy SQLite's write-ahead log back into the database file: (busy, log frames, frames copied).

        SQLite does this itself in the commit that takes the log past 1,000 pages, and that commit
        then waits for two fsyncs. An audit commit may run on the event loop, which would wait with
        it, and every request in flight too (``benchmarks/audit_append.py``, one-record commits:
        175 µs of wall time on average, the longest 17 ms; 110 µs and 0.9 ms without). With
        ``own_checkpoints`` the connection never does that in a commit; the audit writer calls this
        instead, in its thread, with no append of its own in between, so the log is copied whole and
        the next commit starts it from the top. Should other processes' commits keep it from ever
        being whole (the log past ``RESTART_PAGES``), the checkpoint waits for their writers
        (``RESTART``).
        """
        conn = self._connection()
        mode = "RESTART" if self.log_pages > self.RESTART_PAGES else "PASSIVE"
        self.checkpointed_at = self.commits  # failed, it is tried again CHECKPOINT_EVERY commits on
        try:
            if mode == "RESTART" and self._wait_ms != 30_000:
                conn.execute("PRAGMA busy_timeout=30000")
                self._wait_ms = 30_000
            busy, self.log_pages, copied = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except BaseException:
            self.close(failed=True)
            raise
        return busy, self.log_pages, copied

    def close(self, *, failed: bool = False) -> None:
        driver = self._driver
        if self.own_checkpoints and driver is not None and not failed:
            try:  # the log into the file, and the pool's next user checkpoints as SQLite does
                driver.execute("PRAGMA wal_checkpoint(PASSIVE)")
                driver.execute("PRAGMA wal_autocheckpoint=1000")
            except Exception:  # noqa: BLE001 - then it is dropped, not handed back
                failed = True
        pooled, self._pooled, self._driver, self._wait_ms = self._pooled, None, None, None
        if pooled is None:
            return
        try:
            if failed:
                pooled.invalidate()  # rolled back and never handed out again
            else:
                pooled.close()
        except Exception:  # noqa: BLE001 - a connection that is already gone
            logger.debug("closing the audit connection failed", exc_info=True)


_COLUMNS = tuple(c.name for c in records.columns)


@functools.lru_cache(maxsize=8)
def _driver_sql(dialect: str, paramstyle: str) -> dict[str, str] | None:
    """The append's statements in the driver's own SQL, for the databases we ship with."""
    if dialect not in ("sqlite", "postgresql") or paramstyle not in ("qmark", "format", "pyformat"):
        return None
    mark = "?" if paramstyle == "qmark" else "%s"
    lock = " FOR UPDATE" if dialect == "postgresql" else ""  # SQLite: the first write locks the database
    return {
        "ensure": f"INSERT INTO audit_chain (id, seq, hash) VALUES (1, 0, {mark}) ON CONFLICT DO NOTHING",
        "head": f"SELECT seq, hash FROM audit_chain WHERE id = 1{lock}",
        "insert": f"INSERT INTO audit_records ({', '.join(_COLUMNS)}) VALUES ({', '.join([mark] * len(_COLUMNS))})",
        "advance": f"UPDATE audit_chain SET seq = {mark}, hash = {mark} WHERE id = 1",
        # a transaction by hand (Appender): SQLite's write lock up front; psycopg begins one by itself
        "begin": "BEGIN IMMEDIATE" if dialect == "sqlite" else "",
    }


def _lock_head_fast(conn: Connection, sql: dict[str, str]) -> tuple[int, str]:
    conn.exec_driver_sql(sql["ensure"], (GENESIS,))
    seq, head = conn.exec_driver_sql(sql["head"]).one()
    return int(seq), head


def _lock_head(conn: Connection) -> tuple[int, str]:
    """The chain head (last seq, last hash), locked until the transaction ends."""
    name = conn.dialect.name
    if name in ("postgresql", "sqlite"):
        if name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        # On SQLite this first write takes the database's write lock for the whole transaction.
        conn.execute(insert(chain).values(id=1, seq=0, hash=GENESIS).on_conflict_do_nothing())
    elif conn.execute(select(chain.c.id)).first() is None:
        conn.execute(chain.insert().values(id=1, seq=0, hash=GENESIS))
    head = conn.execute(select(chain.c.seq, chain.c.hash).where(chain.c.id == 1).with_for_update()).one()
    return int(head.seq), head.hash


@dataclass(frozen=True)
class Verification:
    ok: bool
    count: int  # records checked and found intact
    seq: int | None = None  # the first broken seq
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "count": self.count, "seq": self.seq, "reason": self.reason}


def verify(engine: Engine, *, page: int = 5000) -> Verification:
    """Walk the whole chain in seq order; the first record that is changed, missing or unlinked."""
    expected, prev, count = 1, GENESIS, 0
    with engine.connect() as conn:
        while True:
            for row in _rows_after(conn, expected - 1, page):
                if row.seq != expected:
                    return Verification(False, count, expected, f"missing record: seq {expected} is gone "
                                        f"(the next stored record is seq {row.seq})")
                if row.prev_hash != prev:
                    return Verification(False, count, row.seq, "broken link: its prev_hash is not the hash of "
                                        "the record before it")
                if digest(prev, row._mapping) != row.hash:
                    return Verification(False, count, row.seq, "changed record: its content does not match its hash")
                prev, expected, count = row.hash, expected + 1, count + 1
            head = conn.execute(select(chain.c.seq, chain.c.hash).where(chain.c.id == 1)).first()
            head_seq, head_hash = (int(head.seq), head.hash) if head else (0, GENESIS)
            if head_seq < count:
                return Verification(False, count, head_seq + 1, f"records beyond the chain head (seq {head_seq})")
            if head_seq == count:
                break
            if not conn.execute(select(func.count()).select_from(records).where(records.c.seq > count)).scalar():
                return Verification(False, count, count + 1, f"missing record: the chain head says {head_seq} "
                                    f"records, the table ends at seq {count}")
            # records were appended while we walked: go on from where we are
    if head_hash != prev:
        return Verification(False, count, head_seq, "broken link: the chain head's hash is not the last record's")
    return Verification(True, count)


def _rows_after(conn: Connection, after: int, page: int) -> Iterator[Any]:
    while rows := conn.execute(select(records).where(records.c.seq > after).order_by(records.c.seq)
                               .limit(page)).all():
        yield from rows
        after = rows[-1].seq


def query(engine: Engine, *, after: int = 0, limit: int = 100, since: float | None = None,
          until: float | None = None, status: int | None = None, **equal: str | None) -> list[dict[str, Any]]:
    """Records with seq > ``after`` matching every filter given (``equal``: column=value), oldest first."""
    stmt = select(records).where(records.c.seq > after)
    for name, value in equal.items():
        if value is not None:
            stmt = stmt.where(records.c[name] == value)
    if status is not None:
        stmt = stmt.where(records.c.status == status)
    if since is not None:
        stmt = stmt.where(records.c.time >= since)
    if until is not None:
        stmt = stmt.where(records.c.time < until)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(stmt.order_by(records.c.seq).limit(limit))]


def tail(engine: Engine, n: int = 20) -> list[dict[str, Any]]:
    """The last ``n`` records, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(select(records).order_by(records.c.seq.desc()).limit(n)).all()
    return [dict(row._mapping) for row in reversed(rows)]
