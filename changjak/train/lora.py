"""changjak train --config configs/qwen2-0.5b/lora-cpu.yaml

LoRA supervised fine-tuning of the base model on the prepared chat data (``changjak data
prepare`` first), or QLoRA (``train.quantization: 4bit``: the frozen base in 4-bit NF4, CUDA
only). Only the adapter trains; the base stays as it was, pinned by its sha256.

Each run writes ``<runs_dir>/<run name>/``: ``run.json`` (MLflow run id, base model, data
version), ``checkpoint-N/`` every ``train.save_steps``, ``config.yaml`` and, at the end,
``adapter/`` (PEFT adapter + tokenizer) and ``plots/training_curve.png``. Everything is logged to
one MLflow run: the resolved settings as params, the base model and data hashes as tags, the
data as the run's input dataset, loss / learning rate / grad norm per step, and the artifacts.

Resume with ``changjak train --resume-from latest`` (the newest checkpoint of the newest run
that has one) or ``--resume-from <run>/checkpoint-N``: the step count, optimizer, scheduler and
MLflow run carry on where they stopped. The run keeps the params it started with (MLflow params
never change); ``config.yaml`` and the ``changjak.resumed_from`` tag record the resumed settings.
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
import torch
import yaml
from transformers import Trainer, TrainerCallback, TrainingArguments

from changjak import base_model, tracking
from changjak.base_model import BaseModelRef
from changjak.data import manifest
from changjak.errors import TrainingError
from changjak.settings import Settings, TrainSettings
from changjak.train import plots
from changjak.train.device import pick_device, pick_dtype
from changjak.train.sft import ChatDataset, PaddingCollator

RUN_INFO = "run.json"
STEP_METRICS = ("loss", "learning_rate", "grad_norm")


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    run_dir: Path
    adapter_dir: Path
    base: BaseModelRef
    train_loss: float
    tokens_per_second: float
    steps: int


def main(settings: Settings) -> TrainResult:
    cfg = settings.train
    device = pick_device(cfg.device)
    if cfg.quantization == "4bit" and device != "cuda":
        raise TrainingError("QLoRA needs a CUDA GPU", hint="set train.quantization: none")
    dtype = pick_dtype(device, cfg.dtype)
    checkpoint = find_checkpoint(settings.runs_dir, cfg.resume_from)
    run_dir = checkpoint.parent if checkpoint else settings.runs_dir / datetime.now().strftime("lora-%Y%m%d-%H%M%S-%f")
    resumed = json.loads((run_dir / RUN_INFO).read_text(encoding="utf-8")) if checkpoint else None

    # Data and base model (data first: checking it is cheap, fetching a model is not); a resumed
    # run must see the very same of both.
    data_manifest = manifest.read_manifest(settings.data_dir)
    if resumed and resumed["dataset_sha256"] != data_manifest["dataset_sha256"]:
        raise TrainingError(f"the data in {settings.data_dir} changed since {run_dir.name} started",
                            hint="resume with the data it was trained on, or start a new run")
    base = base_model.resolve(settings, expected_sha256=resumed["base_model"]["sha256"] if resumed else None)
    tokenizer = base_model.load_tokenizer(base.path)
    records = manifest.read_split(settings.data_dir, "train")[: cfg.max_train_samples]
    dataset = ChatDataset(records, tokenizer, cfg.max_seq_length)
    if len(dataset) == 0:
        raise TrainingError(f"no trainable conversation in {settings.data_dir} ({dataset.dropped} too long)",
                            hint="raise train.max_seq_length or add data")
    if dataset.dropped:
        print(f"skipped {dataset.dropped} conversations whose answer starts after {cfg.max_seq_length} tokens")

    model = _lora_model(base, device, dtype, cfg)
    model.print_trainable_parameters()
    args = TrainingArguments(
        output_dir=str(run_dir),
        max_steps=cfg.max_steps,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # below 1 it is a fraction of the total steps
        weight_decay=cfg.weight_decay,
        activation_checkpointing=cfg.gradient_checkpointing,  # recompute activations: less memory, ~30% slower
        activation_checkpointing_kwargs={"use_reentrant": False},
        # Mixed precision on GPUs; on the CPU the weights are already bf16 and autocast only costs.
        bf16=dtype == torch.bfloat16 and device != "cpu",
        fp16=dtype == torch.float16,
        use_cpu=device == "cpu",
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,  # resuming needs only the newest; each holds adapter + optimizer state
        seed=cfg.seed,
        train_sampling_strategy="group_by_length",  # batches of similar length pad less
        include_num_input_tokens_seen="non_padding",
        dataloader_pin_memory=False,
        remove_unused_columns=False,
        report_to="none",
    )
    meter = _MlflowSteps()
    trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                      data_collator=PaddingCollator(tokenizer.pad_token_id,
                                                    pad_to_multiple_of=8 if device == "cuda" else 1),  # tensor cores
                      callbacks=[meter])

    tracking.configure(settings)
    public = public_settings(settings)
    run_ref = {"run_id": resumed["mlflow_run_id"]} if resumed else {"run_name": run_dir.name}
    with mlflow.start_run(**run_ref) as run:
        if resumed:
            mlflow.set_tag("changjak.resumed_from", checkpoint.name)
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / RUN_INFO).write_text(json.dumps({
                "mlflow_run_id": run.info.run_id,
                "base_model": {"source": base.source, "path": str(base.path), "sha256": base.sha256},
                "dataset_sha256": data_manifest["dataset_sha256"],
            }, indent=2) + "\n", encoding="utf-8")
            mlflow.log_params(dict(_flatten(public)))
            mlflow.set_tags({"changjak.stage": "train", "changjak.base_model.source": base.source,
                             "changjak.base_model.sha256": base.sha256,
                             "changjak.dataset.sha256": data_manifest["dataset_sha256"],
                             "changjak.train.device": device, "changjak.train.dtype": str(dtype).removeprefix("torch.")})
            mlflow.log_input(manifest.to_mlflow_dataset(settings.data_dir), context="training")

        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

        adapter_dir = run_dir / "adapter"
        model.save_pretrained(adapter_dir)
        tokenizer.save_pretrained(adapter_dir)
        config_file = run_dir / "config.yaml"
        config_file.write_text(yaml.safe_dump(public, allow_unicode=True, sort_keys=False), encoding="utf-8")
        curve = plots.training_curve(trainer.state.log_history, run_dir / "plots" / "training_curve.png")
        tokens_per_second = meter.tokens / max(meter.seconds, 1e-9)
        mlflow.log_metrics({"train_loss": output.training_loss, "train_tokens_per_second": tokens_per_second,
                            "train_wall_time_s": meter.seconds, "train_steps": trainer.state.global_step},
                           step=trainer.state.global_step)
        mlflow.log_artifacts(str(adapter_dir), artifact_path="adapter")
        mlflow.log_artifact(str(config_file))
        mlflow.log_artifact(str(settings.data_dir / manifest.MANIFEST), artifact_path="data")
        mlflow.log_artifact(str(curve), artifact_path="plots")

    result = TrainResult(run_id=run.info.run_id, run_dir=run_dir, adapter_dir=adapter_dir, base=base,
                         train_loss=output.training_loss, tokens_per_second=tokens_per_second,
                         steps=trainer.state.global_step)
    print(f"trained {result.steps} steps in {meter.seconds:.1f} s on {device} ({str(dtype).removeprefix('torch.')}): "
          f"loss {result.train_loss:.3f}, {tokens_per_second:.0f} tokens/s → {adapter_dir} (MLflow run {result.run_id})")
    return result


def _lora_model(base: BaseModelRef, device: str, dtype: torch.dtype, cfg: TrainSettings) -> Any:
    """The base model, frozen (and 4-bit for QLoRA), wrapped with trainable LoRA adapters."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.quantization == "4bit":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise TrainingError("QLoRA needs bitsandbytes", hint="pip install bitsandbytes")
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=dtype)
        model = AutoModelForCausalLM.from_pretrained(base.path, quantization_config=nf4, dtype=dtype,
                                                     device_map={"": torch.cuda.current_device()})
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    else:
        model = base_model.load_causal_lm(base.path, device=device, dtype=dtype)
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


class _MlflowSteps(TrainerCallback):
    """Logs loss, learning rate and grad norm per optimizer step; measures this session's throughput."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.tokens_before = time.perf_counter(), state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        metrics = {k: float(v) for k, v in (logs or {}).items() if k in STEP_METRICS}
        if metrics:
            mlflow.log_metrics(metrics, step=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.started
        self.tokens = state.num_input_tokens_seen - self.tokens_before


def find_checkpoint(runs_dir: Path, resume_from: str | None) -> Path | None:
    """The checkpoint to resume from: ``None``, ``latest``, or a ``<run>/checkpoint-N`` directory."""
    if resume_from is None:
        return None
    if resume_from != "latest":
        path = Path(resume_from)
        if not (path / "trainer_state.json").is_file() or not (path.parent / RUN_INFO).is_file():
            raise TrainingError(f"{path} is not a checkpoint of a changjak run",
                                hint="pass <runs_dir>/<run>/checkpoint-N, or 'latest'")
        return path
    for run in sorted((p.parent for p in runs_dir.glob(f"*/{RUN_INFO}")), reverse=True):
        checkpoints = [c for c in run.glob("checkpoint-*") if (c / "trainer_state.json").is_file()]
        if checkpoints:
            return max(checkpoints, key=lambda c: int(c.name.rsplit("-", 1)[1]))
    raise TrainingError(f"no checkpoint to resume in {runs_dir}", hint="train once without --resume-from")


def public_settings(settings: Settings) -> dict[str, Any]:
    """The resolved settings without secrets: no API keys, no passwords inside URLs."""
    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, str):
            return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", value)
        return value

    return scrub(settings.model_dump(mode="json", exclude={"api_keys"}))


def _flatten(tree: dict[str, Any], prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", json.dumps(value, ensure_ascii=False) if isinstance(value, list) else value
