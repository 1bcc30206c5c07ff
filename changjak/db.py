"""The app database: API keys, audit records, feedback, usage. SQLite by default, PostgreSQL by URL.

``CHANGJAK_DATABASE_URL`` picks it (default ``sqlite:///<home>/app.db``); a ``postgresql://`` URL
uses psycopg 3. Every module that stores something declares its tables on :data:`metadata`;
``connect(settings)`` builds the engine and creates missing tables, so a fresh file or database
works at once. The engine is built in ``main()`` or the app's lifespan, never at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import MetaData, create_engine, event, text
from sqlalchemy.engine import Engine

if TYPE_CHECKING:
    from changjak.settings import Settings

metadata = MetaData()
_CREATE_LOCK = 0x63_68_61_6E_67_6A_61_6B  # "changjak": one advisory lock id for table creation


def url_of(settings: Settings) -> str:
    """The SQLAlchemy URL of the app database, with the psycopg 3 driver for PostgreSQL."""
    url = settings.resolved_database_url
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


def connect(settings: Settings, *, create: bool = True) -> Engine:
    """An engine on the app database, its tables created when missing."""
    url = url_of(settings)
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    if create:
        _import_tables()
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":  # replicas starting together must not race on CREATE TABLE
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CREATE_LOCK})
            metadata.create_all(conn)
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DB-API objects
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable across a process kill, fast commits
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _import_tables() -> None:
    """Import every module that declares tables, so ``create_all`` sees them all."""
    import importlib

    for name in TABLE_MODULES:
        importlib.import_module(name)


# Modules that add tables to ``metadata``; a new store adds its module here.
TABLE_MODULES: list[str] = ["changjak.serve.keys", "changjak.audit.store", "changjak.feedback.store"]
