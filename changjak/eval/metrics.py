"""Text metrics that are correct for Korean, in one place.

Korean glues particles and endings to their stems (``주인공은``, ``주인공이``), so word-level
overlap undercounts and rouge-score's default tokenizer, which keeps only ``[a-z0-9]``, scores
every Korean pair 0. ROUGE here counts morphemes from Kiwi; BLEU uses sacrebleu's ``ko-mecab``
tokenizer (the one Korean MT papers report); chrF works on characters and needs neither.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

from changjak.errors import EvaluationError

if TYPE_CHECKING:
    from kiwipiepy import Kiwi

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
# Kiwi's punctuation and symbol tags; dropped like rouge-score drops non-alphanumerics.
_PUNCTUATION_TAGS = frozenset({"SF", "SP", "SS", "SSO", "SSC", "SE", "SO", "SW"})


@lru_cache(maxsize=1)
def _kiwi() -> Kiwi:
    from kiwipiepy import Kiwi

    return Kiwi()  # loads its model (~2 s): once per process


def morphemes(text: str) -> list[str]:
    """The morpheme forms of ``text`` without punctuation: ``주인공은`` → ``["주인공", "은"]``."""
    return [token.form for token in _kiwi().tokenize(text) if token.tag not in _PUNCTUATION_TAGS]


class MorphemeTokenizer:
    """The tokenizer object rouge-score's ``RougeScorer(tokenizer=...)`` expects."""

    def tokenize(self, text: str) -> list[str]:
        return morphemes(text)


def rouge_pairs(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """ROUGE-1/2/L F1 of each pair, on morphemes."""
    from rouge_score.rouge_scorer import RougeScorer

    _check_pairs(predictions, references)
    scorer = RougeScorer(list(ROUGE_TYPES), tokenizer=MorphemeTokenizer())
    pairs = [scorer.score(reference, prediction)  # rouge-score takes (target, prediction)
             for prediction, reference in zip(predictions, references, strict=True)]
    return {name: [scores[name].fmeasure for scores in pairs] for name in ROUGE_TYPES}


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over the pairs, on morphemes."""
    return {name: sum(values) / len(values) for name, values in rouge_pairs(predictions, references).items()}


def paired_standard_error(a: Sequence[float], b: Sequence[float]) -> float:
    """Standard error of the mean of ``b - a`` over paired samples (0 for fewer than two pairs)."""
    if len(a) != len(b):
        raise EvaluationError(f"{len(a)} scores paired with {len(b)}", hint="score the same samples twice")
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    if len(diffs) < 2:
        return 0.0
    mean = sum(diffs) / len(diffs)
    variance = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return math.sqrt(variance / len(diffs))


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) on mecab-ko tokens."""
    import sacrebleu

    _check_pairs(predictions, references)
    return sacrebleu.corpus_bleu(list(predictions), [list(references)], tokenize="ko-mecab").score


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (0-100) on character n-grams."""
    import sacrebleu

    _check_pairs(predictions, references)
    return sacrebleu.corpus_chrf(list(predictions), [list(references)]).score


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood per token), from the summed NLL in nats."""
    if n_tokens <= 0:
        raise EvaluationError("perplexity over zero tokens", hint="evaluate records with a non-empty answer")
    mean = total_nll / n_tokens
    return math.exp(mean) if mean < 700 else math.inf  # exp overflows a float past ~709


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise EvaluationError(f"{len(predictions)} predictions for {len(references)} references",
                              hint="score one prediction per reference")
    if not predictions:
        raise EvaluationError("nothing to score", hint="evaluate at least one record")
