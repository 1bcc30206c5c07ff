"""Korean-correct text metrics: identical text scores perfectly, unrelated text near zero, partial
overlap in between, and morphemes make ROUGE see Korean at all."""

from __future__ import annotations

import math

import pytest

from changjak.errors import EvaluationError
from changjak.eval import metrics

REFERENCE = "주인공은 비 내리는 골목에서 오래된 편지를 발견했다."
PARTIAL = "주인공은 맑은 날 골목에서 편지를 읽었다."
UNRELATED = "커피보다 차를 더 좋아해요."


def test_morphemes_split_particles_and_endings_and_drop_punctuation() -> None:
    tokens = metrics.morphemes("주인공은 편지를 발견했다.")
    assert tokens[:4] == ["주인공", "은", "편지", "를"]
    assert "발견" in tokens
    assert "." not in tokens


def test_rouge_scores_identical_unrelated_and_partial_korean() -> None:
    same = metrics.rouge([REFERENCE], [REFERENCE])
    unrelated = metrics.rouge([UNRELATED], [REFERENCE])
    partial = metrics.rouge([PARTIAL], [REFERENCE])

    assert same == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})
    assert unrelated["rouge1"] < 0.15 and unrelated["rouge2"] == 0.0
    for name in metrics.ROUGE_TYPES:
        assert unrelated[name] < partial[name] < 1.0
    # 주인공/은, 골목/에서, 편지/를, 었/다 match as morphemes (8 of PARTIAL's 12 with kiwipiepy 0.24).
    assert partial["rouge1"] > 0.5


def test_rouge_score_default_tokenizer_sees_no_korean_ours_does() -> None:
    from rouge_score.rouge_scorer import RougeScorer

    default = RougeScorer(["rouge1", "rougeL"]).score(REFERENCE, PARTIAL)
    assert default["rouge1"].fmeasure == 0.0 and default["rougeL"].fmeasure == 0.0
    assert metrics.rouge([PARTIAL], [REFERENCE])["rouge1"] > 0.5


def test_rouge_averages_over_pairs() -> None:
    scores = metrics.rouge([REFERENCE, UNRELATED], [REFERENCE, REFERENCE])
    alone = metrics.rouge([UNRELATED], [REFERENCE])
    assert scores["rougeL"] == pytest.approx((1.0 + alone["rougeL"]) / 2)


def test_bleu_and_chrf_order_identical_partial_unrelated() -> None:
    assert metrics.bleu([REFERENCE], [REFERENCE]) == pytest.approx(100.0)
    assert metrics.chrf([REFERENCE], [REFERENCE]) == pytest.approx(100.0)
    assert metrics.bleu([UNRELATED], [REFERENCE]) < 5.0
    assert metrics.chrf([UNRELATED], [REFERENCE]) < 15.0
    assert metrics.bleu([UNRELATED], [REFERENCE]) < metrics.bleu([PARTIAL], [REFERENCE]) < 100.0
    assert metrics.chrf([UNRELATED], [REFERENCE]) < metrics.chrf([PARTIAL], [REFERENCE]) < 100.0


def test_perplexity_is_exp_of_mean_token_nll() -> None:
    assert metrics.perplexity(0.0, 5) == 1.0
    assert metrics.perplexity(10 * math.log(4), 10) == pytest.approx(4.0)
    assert metrics.perplexity(1e6, 1) == math.inf
    with pytest.raises(EvaluationError, match="zero tokens"):
        metrics.perplexity(1.0, 0)


@pytest.mark.parametrize("scorer", [metrics.rouge, metrics.bleu, metrics.chrf])
def test_mismatched_or_empty_inputs_are_refused(scorer) -> None:
    with pytest.raises(EvaluationError, match="2 predictions for 1 references"):
        scorer(["a", "b"], ["a"])
    with pytest.raises(EvaluationError, match="nothing to score"):
        scorer([], [])


def test_rouge_pairs_average_to_rouge() -> None:
    predictions, references = ["비가 내리는 밤이었다.", "고양이가 잔다."], ["비가 내리는 밤이다.", "개가 짖는다."]
    pairs = metrics.rouge_pairs(predictions, references)
    assert len(pairs["rougeL"]) == 2 and pairs["rougeL"][0] > pairs["rougeL"][1]
    assert metrics.rouge(predictions, references)["rougeL"] == pytest.approx(sum(pairs["rougeL"]) / 2)


def test_paired_standard_error() -> None:
    assert metrics.paired_standard_error([0.1, 0.2, 0.3], [0.2, 0.3, 0.4]) == pytest.approx(0.0)  # a constant gain
    # diffs 0, 0.2: sd 0.1414, se 0.1
    assert metrics.paired_standard_error([0.5, 0.1], [0.5, 0.3]) == pytest.approx(0.1)
    assert metrics.paired_standard_error([0.5], [0.1]) == 0.0
    with pytest.raises(EvaluationError):
        metrics.paired_standard_error([0.1], [0.1, 0.2])
