"""One MLflow store per backend for the whole package (its first migration takes seconds): SQLite
under tmp_path, and a fresh PostgreSQL database made for this test session and dropped after it.
Artifacts stay local in both. Each store holds three training runs shaped like
`changjak train` + `changjak eval` leave them: gate passed, gate failed, not evaluated (newest)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from changjak.settings import Settings
from tests.eval.conftest import FakeTrainingRun, log_training_run


@dataclass(frozen=True)
class Store:
    settings: Settings
    passed: FakeTrainingRun
    failed: FakeTrainingRun
    unevaluated: FakeTrainingRun


@pytest.fixture(scope="session")
def mlflow_postgres_url(postgres_url: str) -> Iterator[str]:
    """A database of its own on the real PostgreSQL, so runs of other sessions never clash."""
    import sqlalchemy as sa

    name = f"changjak_test_{secrets.token_hex(4)}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))  # MLflow keeps a pool open
        admin.dispose()


@pytest.fixture(scope="package", params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Store:
    home = tmp_path_factory.mktemp(f"registry-{request.param}") / ".changjak"
    stores = {} if request.param == "sqlite" else {"tracking_uri": request.getfixturevalue("mlflow_postgres_url")}
    settings = Settings.load(home=home, base_model={"source": str(tiny_model_dir)}, **stores)
    return Store(settings,
                 passed=log_training_run(settings, seed=1, eval_passed=True),
                 failed=log_training_run(settings, seed=2, eval_passed=False),
                 unevaluated=log_training_run(settings, seed=3))


@pytest.fixture
def settings(store: Store) -> Settings:
    """The store's settings with a registered model name of this test's own."""
    return store.settings.model_copy(update={"model_name": f"writer-{uuid.uuid4().hex[:8]}"})
