"""The audit chain (changjak.audit.store) and ``changjak audit verify|tail`` on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from changjak import cli, db
from changjak.audit import store
from changjak.safety.policy import SafetyEngine

PHONE, RRN = "010-2345-6789", "900101-1234568"


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, make_settings):
    """Settings on a fresh SQLite file, or on a schema of its own in the real PostgreSQL."""
    if request.param == "sqlite":
        yield make_settings()
        return
    url = request.getfixturevalue("postgres_url")
    with pg_schema(url) as schema_url:
        yield make_settings(database_url=schema_url)


class pg_schema:  # noqa: N801 - used like a function
    """A throwaway PostgreSQL schema: its URL while inside, dropped after (parallel runs never meet)."""

    def __init__(self, url: str) -> None:
        self.url, self.name = url, f"audit_{uuid.uuid4().hex[:10]}"
        self.admin = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))

    def __enter__(self) -> str:
        with self.admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {self.name}"))
        return f"{self.url}?options=-csearch_path%3D{self.name}"

    def __exit__(self, *exc: object) -> None:
        with self.admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {self.name} CASCADE"))
        self.admin.dispose()


@pytest.fixture
def engine(settings):
    engine = db.connect(settings)
    yield engine
    engine.dispose()


def entry(i: int = 0, **fields) -> dict:
    return {"request_id": f"req_{i}", "time": time.time(), "method": "POST", "route": "/v1/chat/completions",
            "key_prefix": "cj_abc", "principal": "app", "tenant": "acme", "model_version": "3",
            "decisions": {"cache": "miss"}, "status": 200, "outcome": "complete", "latency_ms": 1.23456,
            "prompt_tokens": 5, "completion_tokens": 7, **fields}


def fill(engine, n: int) -> None:
    store.append(engine, [store.clean_entry(entry(i), str) for i in range(n)])


def test_records_chain_in_order_and_verify(engine) -> None:
    for batch in ([entry(0)], [entry(1), entry(2), entry(3)], [entry(4)]):
        store.append(engine, [store.clean_entry(e, str) for e in batch])
    result = store.verify(engine)
    assert (result.ok, result.count) == (True, 5)
    rows = store.tail(engine, 10)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["prev_hash"] == store.GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(rows, rows[1:], strict=False))


def test_an_empty_trail_verifies(engine) -> None:
    assert store.verify(engine).to_dict() == {"ok": True, "count": 0, "seq": None, "reason": None}


@pytest.mark.parametrize("change", ["status = 500", "decisions = '{}'", "principal = 'someone-else'",
                                    "latency_ms = 1.0"])
def test_an_edited_record_breaks_the_chain_at_its_seq(engine, change: str) -> None:
    fill(engine, 5)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE audit_records SET {change} WHERE seq = 3"))
    result = store.verify(engine)
    assert (result.ok, result.seq, result.count) == (False, 3, 2)
    assert "changed record" in result.reason


def test_a_rehashed_forgery_breaks_the_link_of_the_next_record(engine) -> None:
    fill(engine, 5)
    with engine.begin() as conn:
        row = dict(conn.execute(sa.text("SELECT * FROM audit_records WHERE seq = 3")).mappings().one())
        row["status"] = 204
        forged = store.digest(row["prev_hash"], row)
        conn.execute(sa.text("UPDATE audit_records SET status = 204, hash = :h WHERE seq = 3"), {"h": forged})
    result = store.verify(engine)
    assert (result.ok, result.seq) == (False, 4)
    assert "broken link" in result.reason


@pytest.mark.parametrize(("deleted", "found"), [(1, 1), (3, 3), (5, 5)])
def test_a_deleted_record_is_named_by_its_seq(engine, deleted: int, found: int) -> None:
    fill(engine, 5)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_records WHERE seq = :s"), {"s": deleted})
    result = store.verify(engine)
    assert (result.ok, result.seq) == (False, found)
    assert "missing record" in result.reason


def test_strings_are_masked_and_kept_on_one_line(engine, settings) -> None:
    mask = SafetyEngine.from_settings(settings).mask_for_log
    raw = entry(principal=f"연락처 {PHONE}", request_id=f"req-{PHONE}",
                decisions={"note": f"line one\r\nFAKE LOG LINE {RRN}\x1b[31m", f"key {PHONE}": [f"v {PHONE}", 3]})
    store.append(engine, [store.clean_entry(raw, mask)])
    with engine.connect() as conn:
        dump = json.dumps([list(r) for r in conn.execute(sa.text("SELECT * FROM audit_records"))],
                          ensure_ascii=False)
    for secret in ("2345", "6789", "1234568"):
        assert secret not in dump
    row = store.tail(engine, 1)[0]
    assert "\r" not in row["decisions"] and "\n" not in row["decisions"] and "\x1b" not in row["decisions"]
    assert "\\r\\n" in json.loads(row["decisions"])["note"]
    assert store.verify(engine).ok


def six_writers_on_two_engines(settings, work) -> store.Verification:
    """``work(engine, worker)`` in six threads sharing two engines; the chain's verification after."""
    engines = [db.connect(settings), db.connect(settings)]
    errors: list[BaseException] = []

    def guarded(engine, worker: int) -> None:
        try:
            work(engine, worker)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(engines[w % 2], w)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors
        return store.verify(engines[0])
    finally:
        for engine in engines:
            engine.dispose()


def test_concurrent_writers_on_two_engines_keep_one_linear_chain(settings) -> None:
    def work(engine, worker: int) -> None:
        for i in range(15):
            store.append(engine, [store.clean_entry(entry(worker * 100 + i), str) for _ in range(2)])

    result = six_writers_on_two_engines(settings, work)
    assert (result.ok, result.count) == (True, 6 * 15 * 2)


def test_query_filters_and_pages(engine) -> None:
    store.append(engine, [store.clean_entry(entry(i, tenant="a" if i % 2 else "b", status=200 + i), str)
                          for i in range(6)])
    assert [r["seq"] for r in store.query(engine, tenant="a")] == [2, 4, 6]
    assert [r["seq"] for r in store.query(engine, tenant="a", after=2, limit=1)] == [4]
    assert [r["status"] for r in store.query(engine, status=203)] == [203]
    assert store.query(engine, since=time.time() + 60) == []


def test_cli_verify_and_tail(settings, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("CHANGJAK_HOME", str(settings.home)), ("CHANGJAK_DATABASE_URL", settings.database_url)):
        if value:
            monkeypatch.setenv(name, value)
    engine = db.connect(settings)
    fill(engine, 3)
    assert cli.main(["audit", "verify"]) == 0
    assert "intact: 3 records" in capsys.readouterr().out
    assert cli.main(["audit", "tail", "-n", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["seq"] for r in lines] == [2, 3] and lines[0]["time"].endswith("Z")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_records SET tenant = 'evil' WHERE seq = 2"))
    engine.dispose()
    assert cli.main(["audit", "verify", "--json"]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out) == {"ok": False, "count": 1, "seq": 2,
                                   "reason": "changed record: its content does not match its hash"}
    assert "broken at seq 2" in out.err


def test_a_cleaner_masks_once_and_keeps_the_gateway_s_own_ids(settings) -> None:
    calls: list[str] = []
    engine_mask = SafetyEngine.from_settings(settings).mask_for_log

    def mask(text: str) -> str:
        calls.append(text)
        return engine_mask(text)

    clean = store.Cleaner(mask)
    own = "req_" + "0" * 20 + "01023456789a"
    rows = [store.clean_entry(entry(request_id=rid, principal=f"app {PHONE}"), clean)
            for rid in (own, own, f"req-{PHONE}")]
    assert [r["request_id"] for r in rows] == [own, own, "req-<전화번호>"]
    assert rows[0]["principal"] == "app <전화번호>"
    assert calls.count(f"app {PHONE}") == 1 and own not in calls


def test_verify_while_records_are_appended(engine) -> None:
    fill(engine, 3)
    done = threading.Event()

    def writer() -> None:
        for i in range(40):
            store.append(engine, [store.clean_entry(entry(i), str) for _ in range(3)])
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    results = []
    while not done.is_set():
        results.append(store.verify(engine, page=7))
    thread.join()
    assert results and all(r.ok for r in results), [r for r in results if not r.ok][:1]
    assert store.verify(engine).count == 3 + 40 * 3


def test_remembered_decisions_clean_as_a_fresh_cleaner_does(make_settings) -> None:
    mask = SafetyEngine.from_settings(make_settings()).mask_for_log

    class Label(str):  # a str subclass: not remembered, cleaned every time
        pass

    trees = [{"cache": "hit", "limits": {"key": "cj_abc", "reserved": 0}, "safety": {"answer": [], "refused": False}},
             {"n": 1}, {"n": 1.0}, {"n": True}, {"n": (1, 2)}, {"n": {2, 1}}, {"n": float("nan")},
             {"note": f"call {PHONE}"}, {"note": Label(f"call {PHONE}")}, {1: "int key"}, {"1": "str key"}]
    clean = store.Cleaner(mask)
    for _ in range(2):  # computed, then remembered
        for tree in trees:
            raw = entry(decisions=tree)
            assert store.clean_entry(raw, clean) == store.clean_entry(raw, store.Cleaner(mask))
    assert json.loads(store.clean_entry(entry(decisions=trees[7]), clean)["decisions"]) == {"note": "call <전화번호>"}
    assert len(clean.trees) == len(trees) - 1  # all but the str subclass's


def test_appenders_of_two_engines_keep_one_linear_chain(settings) -> None:
    """The audit writer's own connection (store.Appender) takes the same chain lock as store.append."""
    def work(engine, worker: int) -> None:
        appender = store.Appender(engine)
        try:
            for i in range(15):
                seqs = appender([store.clean_entry(entry(worker * 100 + i), str) for _ in range(2)])
                assert seqs[1] == seqs[0] + 1
                if worker % 3 == 0:  # the old path and the new one, side by side
                    store.append(engine, [store.clean_entry(entry(worker * 100 + i), str)])
        finally:
            appender.close()

    result = six_writers_on_two_engines(settings, work)
    assert (result.ok, result.count) == (True, 6 * 15 * 2 + 2 * 15)


@pytest.mark.anyio
async def test_a_held_sqlite_lock_never_blocks_the_event_loop(make_settings) -> None:
    """Small batches go into SQLite on the loop; when another process holds the write lock, the
    batch waits in the writer's thread while the loop keeps running, and lands once it is free."""
    import asyncio
    import sqlite3

    from changjak.audit.middleware import AuditWriter

    settings = make_settings()
    engine = db.connect(settings)
    writer = AuditWriter(engine, str)
    await writer.start()
    try:
        assert await writer.write(entry(1)) == 1  # on the loop
        other = sqlite3.connect(engine.url.database, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        pending = asyncio.ensure_future(writer.write(entry(2)))
        gaps, last = [], time.perf_counter()
        for _ in range(20):
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
        assert not pending.done()
        assert max(gaps) < 0.2  # the loop went on: the wait is the thread's
        other.execute("COMMIT")
        other.close()
        assert await asyncio.wait_for(pending, 10) == 2
        writer._appender._driver.close()  # the connection breaks under the writer
        with pytest.raises(Exception):  # noqa: B017, PT011 - that batch fails, as the writer reports it
            await writer.write(entry(3))
        assert await writer.write(entry(4)) == 3  # the next one opens a new connection
    finally:
        await writer.aclose()
    result = store.verify(engine)
    assert (result.ok, result.count) == (True, 3)
    engine.dispose()


@pytest.mark.anyio
async def test_the_audit_log_is_checkpointed_off_the_event_loop(make_settings, monkeypatch) -> None:
    """On a SQLite file no audit commit copies the write-ahead log back itself (it then waits for two
    fsyncs, and every request on the loop with it): the writer's thread does, between batches, and
    the log stays bounded. Closed, the connection checkpoints as SQLite does again."""
    import os

    from changjak.audit.middleware import AuditWriter

    monkeypatch.setattr(store.Appender, "CHECKPOINT_EVERY", 20)
    engine = db.connect(make_settings())
    writer = AuditWriter(engine, str)
    await writer.start()
    wal = engine.url.database + "-wal"
    try:
        sizes = []
        for i in range(400):  # one record a commit: ~4 pages of log each
            assert await writer.write(entry(i)) == i + 1
            sizes.append(os.path.getsize(wal))
        driver = writer._appender._driver
        assert driver.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        assert writer._appender.checkpointed_at >= 400 - 20
    finally:
        await writer.aclose()
    # 400 commits leave ~6.5 MB of log unless it is checkpointed, and started over, every 20
    assert max(sizes) < 1_000_000, max(sizes)
    assert driver.execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)  # handed back as it was
    result = store.verify(engine)
    assert (result.ok, result.count) == (True, 400)
    engine.dispose()
