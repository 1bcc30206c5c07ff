"""`changjak eval` on the tiny Qwen2 with a random LoRA adapter: base and fine-tuned both scored
from one loaded model, perplexity and greedy generations checked against an unbatched
recomputation, everything logged to the training run, the gate's decision recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from changjak import tracking
from changjak.errors import EvaluationError
from changjak.eval import metrics, run
from changjak.eval.report import METRICS
from changjak.settings import Settings
from tests.eval.conftest import TEST_CHATS, FakeTrainingRun, log_training_run


@pytest.fixture(scope="module")
def runs(eval_settings: Settings) -> list[FakeTrainingRun]:
    """Two finished training runs, oldest first."""
    return [log_training_run(eval_settings, seed=1), log_training_run(eval_settings, seed=2)]


def _answer_nll(model, tokenizer, messages) -> tuple[float, int]:
    """One conversation at a time, with transformers' own loss: no padding, no batching."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False).rstrip()
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids
    labels = [-100] * len(prompt_ids) + ids[len(prompt_ids):]
    assert tokenizer.convert_ids_to_tokens(labels[-1]) == "<|im_end|>"
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
    n = len(ids) - len(prompt_ids)
    return loss * n, n


def _greedy(model, tokenizer, messages, max_new_tokens: int) -> str:
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_eval_compares_base_and_finetuned_and_logs_to_the_run(eval_settings: Settings,
                                                              runs: list[FakeTrainingRun]) -> None:
    trained = runs[0]
    report = run.main(eval_settings, run_id=trained.run_id)

    assert report.run_id == trained.run_id
    assert report.n_samples == 4  # eval.max_samples of the 5 test records
    assert set(report.base) == set(report.finetuned) == set(METRICS)
    assert report.gate.passed and report.gate.failures == []

    # Perplexity over batches of 3 (padded) equals the unbatched recomputation, for both variants.
    records = [json.loads(line) for line in (eval_settings.data_dir / "test.jsonl").read_text().splitlines()][:4]
    for variant, context in (("base", trained.model.disable_adapter), ("finetuned", torch.no_grad)):
        with context():
            sums = [_answer_nll(trained.model, trained.tokenizer, r["messages"]) for r in records]
        expected = metrics.perplexity(sum(s for s, _ in sums), sum(n for _, n in sums))
        assert getattr(report, variant)["perplexity"] == pytest.approx(expected, rel=1e-4)
    assert report.finetuned["perplexity"] != pytest.approx(report.base["perplexity"], rel=1e-3)

    # Samples: left-padded batched greedy outputs equal one-at-a-time ones; the adapter changes them.
    client = tracking.client(eval_settings)
    local = Path(client.download_artifacts(trained.run_id, "eval", str(eval_settings.home / "dl")))
    assert sorted(p.name for p in local.iterdir()) == ["comparison.png", "report.json", "report.md",
                                                       "samples.jsonl"]
    samples = [json.loads(line) for line in (local / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [s["reference"] for s in samples] == [a for _, a in TEST_CHATS[:4]]
    assert samples[0]["prompt"][0]["role"] == "system"
    with torch.no_grad():
        assert [s["finetuned"] for s in samples] == [_greedy(trained.model, trained.tokenizer, r["messages"], 8)
                                                     for r in records]
        with trained.model.disable_adapter():
            assert [s["base"] for s in samples] == [_greedy(trained.model, trained.tokenizer, r["messages"], 8)
                                                    for r in records]
    assert any(s["base"] != s["finetuned"] for s in samples)
    refs = [s["reference"] for s in samples]
    tuned = [s["finetuned"] for s in samples]
    assert report.finetuned["rougeL"] == pytest.approx(metrics.rouge(tuned, refs)["rougeL"])
    assert report.base["chrf"] == pytest.approx(metrics.chrf([s["base"] for s in samples], refs))
    expected_se = metrics.paired_standard_error(metrics.rouge_pairs([s["base"] for s in samples], refs)["rougeL"],
                                                metrics.rouge_pairs(tuned, refs)["rougeL"])
    assert report.rouge_l_gain_se == pytest.approx(expected_se)

    # The run carries the scores, the decision and the report.
    logged = client.get_run(trained.run_id).data
    for variant in ("base", "finetuned"):
        for name, value in getattr(report, variant).items():
            assert logged.metrics[f"eval.{variant}.{name}"] == pytest.approx(value)
    assert logged.tags["changjak.eval.passed"] == "true"
    assert logged.metrics["eval.rougeL_gain_se"] == pytest.approx(report.rouge_l_gain_se)
    document = json.loads((local / "report.json").read_text(encoding="utf-8"))
    assert document["gate"] == {"passed": True, "failures": []}
    assert document["eval_settings"]["max_samples"] == 4
    assert "| ROUGE-L |" in (local / "report.md").read_text(encoding="utf-8")
    assert (local / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_run_is_the_newest_and_a_failed_gate_is_recorded(eval_settings: Settings,
                                                                  runs: list[FakeTrainingRun]) -> None:
    strict = eval_settings.eval.model_copy(update={"gate": eval_settings.eval.gate.model_copy(
        update={"min_rouge_l": 1.0})})
    report = run.main(eval_settings.model_copy(update={"eval": strict}))

    assert report.run_id == runs[1].run_id
    assert not report.gate.passed
    assert any("min_rouge_l 1.0" in failure for failure in report.gate.failures)
    assert tracking.client(eval_settings).get_run(runs[1].run_id).data.tags["changjak.eval.passed"] == "false"


def test_bad_runs_are_refused_with_a_hint(eval_settings: Settings) -> None:
    other = eval_settings.model_copy(update={"experiment": "eval-errors"})
    with pytest.raises(EvaluationError, match="no finished training run") as e:
        run.main(other)
    assert "changjak train" in e.value.hint
    with pytest.raises(EvaluationError, match="no MLflow run"):
        run.main(other, run_id="0" * 32)
    bare = log_training_run(other, seed=3, adapter=False)
    with pytest.raises(EvaluationError, match="has no adapter/ artifact"):
        run.main(other, run_id=bare.run_id)
    client = tracking.client(other)
    not_training = client.create_run(client.get_experiment_by_name("eval-errors").experiment_id).info.run_id
    with pytest.raises(EvaluationError, match="is not a training run"):
        run.main(other, run_id=not_training)
