"""changjak eval --run-id RUN

Evaluates a training run's LoRA adapter against the very base it was trained on (the run's
tagged source, checked by sha256), on the first ``eval.max_samples`` records of the test split:

- perplexity of the reference answer given its prompt (loss on the answer and its end token);
- greedy generations scored against the reference with ROUGE-1/2/L (on morphemes), BLEU, chrF;

for the base (adapter disabled) and the fine-tuned model side by side, from one loaded model.
The promotion gate (``eval.gate``) decides; scores, the decision (tag ``changjak.eval.passed``)
and the report files (see ``changjak.eval.report``) are logged to the training run.
"""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from tqdm import tqdm

from changjak import base_model, tracking
from changjak.data import manifest
from changjak.errors import EvaluationError
from changjak.eval import gate, metrics
from changjak.eval import report as report_files
from changjak.eval.report import EvalReport

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from changjak.settings import EvalSettings, Settings

VARIANTS = ("base", "finetuned")
PASSED_TAG = "changjak.eval.passed"
_TRAIN_HINT = "run `changjak train` first, or pass --run-id of a training run"
console = Console()


def main(settings: Settings, run_id: str | None = None) -> EvalReport:
    from peft import PeftModel

    from changjak.train.device import pick_device, pick_dtype

    client = tracking.client(settings)
    run = training_run(client, settings, run_id)
    run_id = run.info.run_id
    records = manifest.read_split(settings.data_dir, "test")[: settings.eval.max_samples]
    if not records:
        raise EvaluationError(f"the test split in {settings.data_dir} is empty",
                              hint="raise data.test_fraction and run `changjak data prepare` again")
    examples = [_prompt_and_reference(record) for record in records]

    device = pick_device(settings.train.device)
    tags = run.data.tags
    base = base_model.resolve(settings, source=tags.get("changjak.base_model.source"),
                              expected_sha256=tags.get("changjak.base_model.sha256"))
    tokenizer = base_model.load_tokenizer(base.path, padding_side="left")
    with tempfile.TemporaryDirectory(prefix="changjak-adapter-") as tmp:
        adapter_dir = _download_adapter(client, settings, run_id, Path(tmp))  # before the slow load
        model = base_model.load_causal_lm(base.path, device=device, dtype=pick_dtype(device, settings.train.dtype))
        model = PeftModel.from_pretrained(model, adapter_dir).eval()

    prompts = [tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
               for prompt, _ in examples]
    references = [reference for _, reference in examples]
    encoded = [_encode_answer(tokenizer, text, prompt, reference)
               for text, (prompt, reference) in zip(prompts, examples, strict=True)]
    outputs: dict[str, list[str]] = {}
    scores: dict[str, dict[str, float]] = {}
    rouge_l: dict[str, list[float]] = {}
    for variant in VARIANTS:
        with model.disable_adapter() if variant == "base" else nullcontext():
            nll, n_tokens = answer_nll(model, encoded, tokenizer.pad_token_id, settings.eval.batch_size, variant)
            outputs[variant] = generate(model, tokenizer, prompts, settings.eval, variant)
        pairs = metrics.rouge_pairs(outputs[variant], references)
        rouge_l[variant] = pairs["rougeL"]
        scores[variant] = {"perplexity": metrics.perplexity(nll, n_tokens),
                           **{name: sum(values) / len(values) for name, values in pairs.items()},
                           "bleu": metrics.bleu(outputs[variant], references),
                           "chrf": metrics.chrf(outputs[variant], references)}

    gain_se = metrics.paired_standard_error(rouge_l["base"], rouge_l["finetuned"])
    decision = gate.check(scores["base"], scores["finetuned"], settings.eval.gate, rouge_l_gain_se=gain_se)
    report = EvalReport(run_id=run_id, base=scores["base"], finetuned=scores["finetuned"], gate=decision,
                        n_samples=len(examples), rouge_l_gain_se=gain_se)
    samples = [{"id": record["id"], "prompt": prompt, "reference": reference, "base": base_out,
                "finetuned": tuned_out}
               for record, (prompt, reference), base_out, tuned_out in zip(
                   records, examples, outputs["base"], outputs["finetuned"], strict=True)]
    out_dir = report_files.write(report, samples, settings.eval.model_dump(mode="json"),
                                 settings.home / "eval" / run_id)
    _log(client, report, out_dir)

    console.print(report_files.table(report))
    for failure in decision.failures:
        console.print(f"[red]gate:[/] {failure}")
    console.print(f"evaluated run {run_id}: gate {'passed' if decision.passed else 'failed'}; report in {out_dir}")
    return report


def training_run(client: MlflowClient, settings: Settings, run_id: str | None) -> Run:
    """The given run (checked to be a training run), or the newest finished training run."""
    from mlflow.exceptions import MlflowException

    if run_id is None:
        experiment = client.get_experiment_by_name(settings.experiment)
        finished_training = "tags.`changjak.stage` = 'train' and attributes.status = 'FINISHED'"
        runs = client.search_runs([experiment.experiment_id], filter_string=finished_training,
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise EvaluationError(f"no finished training run in experiment {settings.experiment!r}",
                                  hint=_TRAIN_HINT)
        return runs[0]
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise EvaluationError(f"no MLflow run {run_id!r} in {settings.resolved_tracking_uri}",
                              hint=_TRAIN_HINT) from None
    if run.data.tags.get("changjak.stage") != "train":
        raise EvaluationError(f"run {run_id} is not a training run (tag changjak.stage is not 'train')",
                              hint=_TRAIN_HINT)
    return run


def _download_adapter(client: MlflowClient, settings: Settings, run_id: str, dest: Path) -> Path:
    import mlflow.artifacts

    if not client.list_artifacts(run_id, "adapter"):
        raise EvaluationError(f"run {run_id} has no adapter/ artifact", hint=_TRAIN_HINT)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="adapter", dst_path=str(dest),
                                                    tracking_uri=settings.resolved_tracking_uri))


def _prompt_and_reference(record: dict[str, Any]) -> tuple[list[dict[str, str]], str]:
    """The conversation up to its last assistant turn, and that turn's text."""
    messages = record["messages"]
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=0)
    if last == 0:
        raise EvaluationError(f"test record {record.get('id')} has no assistant answer after a prompt",
                              hint="run `changjak data prepare` again; it keeps only complete conversations")
    return messages[:last], messages[last]["content"]


def _encode_answer(tokenizer: Any, prompt_text: str, prompt: list[dict[str, str]],
                   reference: str) -> dict[str, list[int]]:
    """The prompt's tokens (labels ignored) then the answer's with its end-of-turn token."""
    from changjak.train.sft import IGNORE_INDEX

    full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": reference}],
                                         tokenize=False).rstrip()  # keeps <|im_end|>, drops the newline
    if not full.startswith(prompt_text) or len(full) == len(prompt_text):
        raise EvaluationError("the chat template renders the prompt differently from the whole conversation",
                              hint="use a chat template whose generation prompt prefixes the answer")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt_text):], add_special_tokens=False)["input_ids"]
    return {"input_ids": prompt_ids + answer_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids}


def answer_nll(model: Any, encoded: list[dict[str, list[int]]], pad_token_id: int, batch_size: int,
               variant: str) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of the labelled tokens, and their count."""
    import torch
    import torch.nn.functional as F

    from changjak.train.sft import IGNORE_INDEX, PaddingCollator

    collate = PaddingCollator(pad_token_id)
    total, count = 0.0, 0
    for start in tqdm(range(0, len(encoded), batch_size), desc=f"{variant}: perplexity", unit="batch"):
        batch = {k: v.to(model.device) for k, v in collate(encoded[start:start + batch_size]).items()}
        with torch.inference_mode():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for row_logits, row_labels in zip(logits[:, :-1], batch["labels"][:, 1:], strict=True):
            scored = row_labels != IGNORE_INDEX  # upcast only these rows to fp32: the vocabulary is wide
            total += F.cross_entropy(row_logits[scored].float(), row_labels[scored], reduction="sum").item()
            count += int(scored.sum())
    return total, count


def generate(model: Any, tokenizer: Any, prompts: list[str], cfg: EvalSettings, variant: str) -> list[str]:
    """Greedy replies to the rendered prompts, in left-padded batches, with ``cfg.repetition_penalty``."""
    import torch

    eos = model.generation_config.eos_token_id
    eos_ids = sorted({tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None})
    replies = []
    for start in tqdm(range(0, len(prompts), cfg.batch_size), desc=f"{variant}: generate", unit="batch"):
        batch = tokenizer(prompts[start:start + cfg.batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            # passed explicitly so a model's own default (Qwen's is 1.05) never differs between variants
            out = model.generate(**batch, max_new_tokens=cfg.max_new_tokens, do_sample=False,
                                 repetition_penalty=cfg.repetition_penalty, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids)
        new_tokens = out[:, batch["input_ids"].shape[1]:]
        replies += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return replies


def _log(client: MlflowClient, report: EvalReport, out_dir: Path) -> None:
    """Scores as ``eval.<variant>.<metric>``, the gate's decision as a tag, the files under ``eval/``."""
    import time

    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    values = {f"eval.{variant}.{name}": value
              for variant, scores in (("base", report.base), ("finetuned", report.finetuned))
              for name, value in scores.items()}
    values["eval.n_samples"] = report.n_samples
    values["eval.rougeL_gain_se"] = report.rouge_l_gain_se
    client.log_batch(report.run_id, metrics=[Metric(key, float(value), now, 0) for key, value in values.items()],
                     tags=[RunTag(PASSED_TAG, str(report.gate.passed).lower())])
    client.log_artifacts(report.run_id, str(out_dir), artifact_path="eval")
