"""The promotion gate: each threshold fails on its own, with the numbers in the message."""

from __future__ import annotations

import math

import pytest

from changjak.errors import EvaluationError
from changjak.eval.gate import check
from changjak.settings import GateSettings

BASE = {"perplexity": 10.0, "rougeL": 0.20, "chrf": 20.0}


def test_defaults_pass_a_model_that_is_not_worse() -> None:
    result = check(BASE, {"perplexity": 9.0, "rougeL": 0.25, "chrf": 22.0}, GateSettings())
    assert result.passed and result.failures == []


def test_default_perplexity_ratio_refuses_a_worse_model() -> None:
    result = check(BASE, {**BASE, "perplexity": 12.0}, GateSettings())
    assert not result.passed
    (failure,) = result.failures
    assert "perplexity 12.000 is 1.200x the base's 10.000" in failure and "max_perplexity_ratio 1.0" in failure


@pytest.mark.parametrize(("threshold", "finetuned", "expected"), [
    ({"min_rouge_l": 0.3}, {"rougeL": 0.25}, "ROUGE-L 0.2500 < min_rouge_l 0.3"),
    ({"min_chrf": 30}, {"chrf": 22.0}, "chrF 22.00 < min_chrf 30"),
    ({"min_rouge_l_gain": 0.1}, {"rougeL": 0.25}, "ROUGE-L gain +0.0500 (fine-tuned 0.2500 - base 0.2000)"),
    ({"max_perplexity_ratio": 0.5}, {"perplexity": 9.0}, "max_perplexity_ratio 0.5"),
])
def test_each_threshold_fails_alone_and_names_itself(threshold, finetuned, expected) -> None:
    result = check(BASE, {**BASE, **finetuned}, GateSettings(**threshold))
    assert not result.passed
    assert len(result.failures) == 1 and expected in result.failures[0]
    assert check(BASE, {**BASE, **finetuned}, GateSettings()).passed  # the same scores pass the defaults


def test_every_failure_is_listed() -> None:
    gate = GateSettings(min_rouge_l=0.5, min_chrf=50, min_rouge_l_gain=0.0)
    result = check(BASE, {"perplexity": 20.0, "rougeL": 0.1, "chrf": 10.0}, gate)
    assert len(result.failures) == 4


def test_rouge_l_gain_minus_one_never_fails() -> None:
    assert check({**BASE, "rougeL": 1.0}, {**BASE, "rougeL": 0.0}, GateSettings(min_rouge_l_gain=-1)).passed


def test_a_nan_or_infinite_perplexity_fails() -> None:
    assert not check(BASE, {**BASE, "perplexity": math.nan}, GateSettings()).passed
    assert not check(BASE, {**BASE, "perplexity": math.inf}, GateSettings()).passed


def test_missing_scores_are_an_error() -> None:
    with pytest.raises(EvaluationError, match="finetuned scores lack chrf"):
        check(BASE, {"perplexity": 1.0, "rougeL": 0.1}, GateSettings())


def test_a_rouge_l_loss_within_noise_passes_only_with_z() -> None:
    tuned = {**BASE, "rougeL": 0.19}  # a loss of 0.01
    gate = GateSettings(min_rouge_l_gain=0.0, rouge_l_gain_z=1.64)
    assert not check(BASE, tuned, GateSettings(min_rouge_l_gain=0.0), rouge_l_gain_se=0.02).passed
    assert check(BASE, tuned, gate, rouge_l_gain_se=0.02).passed  # -0.01 + 1.64 x 0.02 >= 0
    (failure,) = check(BASE, tuned, gate, rouge_l_gain_se=0.005).failures  # -0.01 + 0.0082 < 0
    assert "+ 1.64 x SE 0.0050" in failure
