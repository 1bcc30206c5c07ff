"""MLflow wiring shared by every stage: one place that points MLflow at the configured tracking
and registry stores (SQLite under ``.changjak/`` by default, PostgreSQL by URL) and makes sure
the experiment exists with artifacts under ``settings.resolved_artifact_root``.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from changjak.settings import Settings


def configure(settings: Settings) -> str:
    """Point MLflow at the settings' stores; return the experiment id (created if missing)."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    settings.home.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.resolved_tracking_uri)
    mlflow.set_registry_uri(settings.resolved_registry_uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(settings.experiment)
    if exp is None:
        artifact_location = f"{settings.resolved_artifact_root.rstrip('/')}/{settings.experiment}"
        exp_id = client.create_experiment(settings.experiment, artifact_location=artifact_location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def client(settings: Settings) -> MlflowClient:
    """A client bound to the settings' stores (configures MLflow first)."""
    import mlflow

    configure(settings)
    return mlflow.MlflowClient(tracking_uri=settings.resolved_tracking_uri,
                               registry_uri=settings.resolved_registry_uri)
