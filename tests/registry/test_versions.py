"""`changjak register`: a run's adapter becomes a version with its lineage and scores as tags and
the `challenger` alias, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from changjak import registry, tracking
from changjak.errors import RegistryError
from changjak.settings import Settings
from tests.registry.conftest import Store


def test_register_tags_lineage_and_scores_and_moves_the_challenger(store: Store, settings: Settings,
                                                                   tmp_path: Path) -> None:
    client = tracking.client(settings)

    first = registry.register(settings, run_id=store.passed.run_id)
    second = registry.register(settings, run_id=store.failed.run_id)

    assert (first, second) == ("1", "2")
    assert str(client.get_registered_model(settings.model_name).aliases["challenger"]) == "2"
    tags = client.get_model_version(settings.model_name, "1").tags
    run_tags = client.get_run(store.passed.run_id).data.tags
    assert tags["run_id"] == store.passed.run_id
    assert tags["dataset_sha256"] == run_tags["changjak.dataset.sha256"]
    assert tags["base_model_source"] == settings.base_model.source
    assert tags["base_model_sha256"] == run_tags["changjak.base_model.sha256"]
    assert tags["gate_passed"] == "true"
    assert float(tags["eval.finetuned.rougeL"]) == 0.25 and float(tags["eval.base.rougeL"]) == 0.125
    assert client.get_model_version(settings.model_name, "2").tags["gate_passed"] == "false"
    # The version's source is the run's adapter: what resolve() will download.
    source = Path(client.download_artifacts(store.passed.run_id, "adapter", str(tmp_path)))
    uri = client.get_model_version_download_uri(settings.model_name, "1")
    assert uri.endswith(f"{store.passed.run_id}/artifacts/adapter") and (source / "adapter_config.json").is_file()


def test_register_defaults_to_the_newest_evaluated_run(store: Store, settings: Settings) -> None:
    version = registry.register(settings)
    tags = tracking.client(settings).get_model_version(settings.model_name, version).tags
    assert tags["run_id"] == store.failed.run_id  # newer than `passed`; `unevaluated` is newer still but skipped


def test_a_not_evaluated_run_can_be_registered_but_says_so(store: Store, settings: Settings) -> None:
    version = registry.register(settings, run_id=store.unevaluated.run_id)
    tags = tracking.client(settings).get_model_version(settings.model_name, version).tags
    assert tags["gate_passed"] == "not evaluated"
    assert not any(key.startswith("eval.") for key in tags)


def test_runs_that_cannot_be_registered(store: Store, settings: Settings) -> None:
    client = tracking.client(settings)
    experiment_id = client.get_experiment_by_name(settings.experiment).experiment_id
    no_adapter = client.create_run(experiment_id, tags={"changjak.stage": "train"}).info.run_id
    not_training = client.create_run(experiment_id).info.run_id

    with pytest.raises(RegistryError, match="has no adapter/ artifact") as e:
        registry.register(settings, run_id=no_adapter)
    assert "changjak train" in e.value.hint
    with pytest.raises(RegistryError, match="is not a training run"):
        registry.register(settings, run_id=not_training)
    with pytest.raises(RegistryError, match="no MLflow run"):
        registry.register(settings, run_id="f" * 32)
    with pytest.raises(RegistryError, match="no evaluated training run"):
        registry.register(settings.model_copy(update={"experiment": "empty"}))
    assert client.search_model_versions(f"name = '{settings.model_name}'") == []
