"""The app database: tables made on first connect, also by several processes starting at once."""

import subprocess
import sys
import uuid

import sqlalchemy as sa

from changjak import db


def test_a_fresh_sqlite_file_gets_every_table(make_settings):
    engine = db.connect(make_settings())
    names = set(sa.inspect(engine).get_table_names())
    assert {"api_keys", "audit_records", "feedback"} <= names
    engine.dispose()


def test_replicas_creating_tables_at_once_on_postgres_do_not_race(postgres_url, tmp_path):
    schema = f"race_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = f"{postgres_url}?options=-csearch_path%3D{schema}"
    code = ("import sys; from changjak import db; from changjak.settings import Settings; "
            f"db.connect(Settings.load(home={str(tmp_path)!r}, database_url=sys.argv[1])).dispose()")
    try:
        procs = [subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE) for _ in range(4)]
        errors = [p.communicate(timeout=120)[1].decode() for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, errors
        with admin.connect() as conn:
            tables = conn.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": schema})
            assert {"api_keys", "audit_records", "feedback"} <= {row[0] for row in tables}
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
