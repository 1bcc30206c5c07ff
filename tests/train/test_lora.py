"""A few real LoRA steps of the tiny Qwen2 on Korean chats: what LoRA promises, what MLflow records,
and resuming from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from changjak import base_model
from changjak.data import manifest
from changjak.errors import TrainingError
from changjak.settings import Settings
from changjak.train import lora


def _with_train(settings: Settings, **train) -> Settings:
    return settings.model_copy(update={"train": settings.train.model_copy(update=train)})


def _client(settings: Settings):
    from changjak import tracking

    return tracking.client(settings)


def test_lora_trains_the_adapter_only_and_logs_the_run(train_settings: Settings, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    base_sha = base_model.directory_sha256(Path(train_settings.base_model.source), train_settings.models_dir)
    trained = {}
    build = lora._lora_model
    monkeypatch.setattr(lora, "_lora_model", lambda *a: trained.setdefault("model", build(*a)))

    result = lora.main(train_settings)

    assert result.steps == 8
    assert result.base.sha256 == base_sha
    # In memory, every base weight is still the one on disk; only the LoRA weights moved.
    original = base_model.load_causal_lm(result.base.path, device="cpu", dtype=torch.float32).state_dict()
    base_weights = {name.replace(".base_layer", ""): p for name, p in
                    trained["model"].get_base_model().named_parameters() if "lora_" not in name}
    assert base_weights.keys() == original.keys()
    assert all(torch.equal(p, original[name]) for name, p in base_weights.items())
    assert base_model.directory_sha256(result.base.path, tmp_path / "fresh-hash-cache") == base_sha
    # The saved adapter holds only LoRA weights, and B has left its zero initialisation.
    weights = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert weights and all("lora_A" in k or "lora_B" in k for k in weights)
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert len(lora_b) == 2 * 7  # 2 layers x 7 target modules
    assert all(w.abs().sum() > 0 for w in lora_b)
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["r"] == 4
    assert (result.adapter_dir / "tokenizer_config.json").is_file()
    assert result.tokens_per_second > 0

    client = _client(train_settings)
    run = client.get_run(result.run_id)
    losses = [m.value for m in sorted(client.get_metric_history(result.run_id, "loss"), key=lambda m: m.step)]
    assert len(losses) == 8
    assert sum(losses[4:]) / 4 < sum(losses[:4]) / 4 - 0.05  # second pass over the data beats the first
    assert {m.step for m in client.get_metric_history(result.run_id, "learning_rate")} == set(range(1, 9))
    assert client.get_metric_history(result.run_id, "grad_norm")
    assert run.data.metrics["train_tokens_per_second"] == pytest.approx(result.tokens_per_second)
    assert run.data.params["train.lora.r"] == "4"
    assert run.data.params["base_model.source"] == train_settings.base_model.source
    assert not any("api_keys" in key for key in run.data.params)
    dataset_sha = manifest.read_manifest(train_settings.data_dir)["dataset_sha256"]
    assert run.data.tags["changjak.stage"] == "train"
    assert run.data.tags["changjak.base_model.sha256"] == base_sha
    assert run.data.tags["changjak.dataset.sha256"] == dataset_sha
    assert (run.data.tags["changjak.train.device"], run.data.tags["changjak.train.dtype"]) == ("cpu", "float32")
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == dataset_sha[:16]
    assert dataset_input.tags[0].value == "training"
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"adapter", "config.yaml", "data", "plots"} <= artifacts
    assert "adapter/adapter_model.safetensors" in {a.path for a in client.list_artifacts(result.run_id, "adapter")}
    assert [a.path for a in client.list_artifacts(result.run_id, "plots")] == ["plots/training_curve.png"]
    assert (result.run_dir / "plots" / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_latest_continues_the_step_count_and_the_mlflow_run(train_settings: Settings) -> None:
    first = lora.main(_with_train(train_settings, max_steps=4, save_steps=2))
    assert sorted(p.name for p in first.run_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    resumed = lora.main(_with_train(train_settings, max_steps=6, save_steps=2, resume_from="latest"))

    assert resumed.run_id == first.run_id
    assert resumed.run_dir == first.run_dir
    assert resumed.steps == 6
    client = _client(train_settings)
    steps = sorted(m.step for m in client.get_metric_history(first.run_id, "loss"))
    assert steps == [1, 2, 3, 4, 5, 6]
    assert client.get_run(first.run_id).data.tags["changjak.resumed_from"] == "checkpoint-4"


def test_resume_from_an_explicit_checkpoint_refusing_non_checkpoints_and_changed_data(train_settings: Settings,
                                                                       tmp_path: Path) -> None:
    # Activation checkpointing on, to run that path too.
    first = lora.main(_with_train(train_settings, max_steps=4, save_steps=2, gradient_checkpointing=True))

    resumed = lora.main(_with_train(train_settings, max_steps=3, resume_from=str(first.run_dir / "checkpoint-2")))
    assert resumed.steps == 3
    with pytest.raises(TrainingError, match="not a checkpoint"):
        lora.main(_with_train(train_settings, resume_from=str(tmp_path)))

    manifest_file = train_settings.data_dir / manifest.MANIFEST
    changed = json.loads(manifest_file.read_text(encoding="utf-8")) | {"dataset_sha256": "0" * 64}
    manifest_file.write_text(json.dumps(changed), encoding="utf-8")
    with pytest.raises(TrainingError, match="changed since"):
        lora.main(_with_train(train_settings, resume_from="latest"))


def test_resume_latest_without_any_run_is_refused(tiny_settings: Settings) -> None:
    with pytest.raises(TrainingError, match="no checkpoint to resume") as err:
        lora.find_checkpoint(tiny_settings.runs_dir, "latest")
    assert err.value.hint


def test_qlora_on_cpu_is_refused_before_loading_anything(tiny_settings: Settings) -> None:
    settings = _with_train(tiny_settings, quantization="4bit")
    with pytest.raises(TrainingError, match="QLoRA needs a CUDA GPU") as err:
        lora.main(settings)
    assert err.value.hint == "set train.quantization: none"
    assert not settings.runs_dir.exists()


def test_public_settings_drop_api_keys_and_url_passwords(make_settings) -> None:
    settings = make_settings(api_keys="k1,k2", database_url="postgresql://app:s3cret@db:5432/changjak")
    public = lora.public_settings(settings)
    assert "api_keys" not in public
    assert public["database_url"] == "postgresql://app:***@db:5432/changjak"
    assert "s3cret" not in json.dumps(public)
