"""changjak register --run-id RUN

Registers a training run's ``adapter/`` artifact as a new version of ``settings.model_name`` and
points the ``challenger`` alias at it. The version carries its lineage as tags (run, dataset
hash, base model source and hash) and its evaluation (every ``eval.*`` metric of the run,
``gate_passed`` and ``bias_passed``), so promotion and serving never have to go back to the run to decide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from changjak import tracking
from changjak.errors import RegistryError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

    from changjak.settings import Settings

ADAPTER = "adapter"
CHAMPION, CHALLENGER = "champion", "challenger"
_DESCRIPTION = ("LoRA adapters of the changjak Korean creative-writing assistant; "
                "each version's tags name its base.")
_RUN_HINT = "pass --run-id of a run made by `changjak train` (and evaluated by `changjak eval`)"


def register(settings: Settings, run_id: str | None = None) -> str:
    """Register the run's adapter (default: the newest evaluated training run); return the version."""
    client = tracking.client(settings)
    run = _newest_evaluated_run(client, settings) if run_id is None else _training_run(client, run_id)
    run_id = run.info.run_id
    if not client.list_artifacts(run_id, ADAPTER):
        raise RegistryError(f"run {run_id} has no {ADAPTER}/ artifact to register", hint=_RUN_HINT)

    name = settings.model_name
    if _find_registered_model(client, name) is None:
        client.create_registered_model(name, description=_DESCRIPTION)
    version = client.create_model_version(name, source=f"{run.info.artifact_uri}/{ADAPTER}", run_id=run_id,
                                          tags=lineage_tags(run))
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    gate = version.tags.get("gate_passed", "not evaluated")
    print(f"registered {name} v{version.version} ({CHALLENGER}) from run {run_id}, gate: {gate}")
    return str(version.version)


def lineage_tags(run: Run) -> dict[str, str]:
    """What a version must carry: where it came from and how it scored."""
    tags = run.data.tags
    lineage = {
        "run_id": run.info.run_id,
        "dataset_sha256": tags.get("changjak.dataset.sha256", ""),
        "base_model_source": tags.get("changjak.base_model.source", ""),
        "base_model_sha256": tags.get("changjak.base_model.sha256", ""),
        "gate_passed": tags.get("changjak.eval.passed", "not evaluated"),
        "bias_passed": tags.get("changjak.eval.bias_passed", "not evaluated"),  # eval --suite bias
    }
    scores = {key: f"{value:.6g}" for key, value in sorted(run.data.metrics.items()) if key.startswith("eval.")}
    return {**lineage, **scores}


def registered_model(client: MlflowClient, name: str) -> RegisteredModel:
    model = _find_registered_model(client, name)
    if model is None:
        raise RegistryError(f"no registered model {name!r}", hint="run `changjak register` first")
    return model


def model_version(client: MlflowClient, name: str, version: str | int) -> ModelVersion:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(f"{name} has no version {version}",
                            hint=f"pick a version of {name} in the MLflow UI, or `changjak register` one") from None


def _find_registered_model(client: MlflowClient, name: str) -> RegisteredModel | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _training_run(client: MlflowClient, run_id: str) -> Run:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise RegistryError(f"no MLflow run {run_id!r}", hint=_RUN_HINT) from None
    if run.data.tags.get("changjak.stage") != "train":
        raise RegistryError(f"run {run_id} is not a training run", hint=_RUN_HINT)
    return run


def _newest_evaluated_run(client: MlflowClient, settings: Settings) -> Run:
    experiment = client.get_experiment_by_name(settings.experiment)
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`changjak.stage` = 'train'",
                              order_by=["attributes.start_time DESC"], max_results=200)
    evaluated = [run for run in runs if "changjak.eval.passed" in run.data.tags]
    if not evaluated:
        raise RegistryError(f"no evaluated training run in experiment {settings.experiment!r}",
                            hint="run `changjak eval` first, or pass --run-id")
    return evaluated[0]
