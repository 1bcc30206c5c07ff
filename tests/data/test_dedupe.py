"""Exact keys, MinHash/LSH near-duplicate detection verified with exact Jaccard."""

from __future__ import annotations

import random

import pytest

from changjak.data import dedupe
from tests.data.conftest import korean_text


def test_exact_key_depends_on_content_only() -> None:
    a = [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": "반가워"}]
    same = [{"content": "안녕", "role": "user"}, {"content": "반가워", "role": "assistant"}]
    other = [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": "반가워!"}]
    assert dedupe.exact_key(a) == dedupe.exact_key(same) != dedupe.exact_key(other)


def test_jaccard_of_character_five_grams() -> None:
    assert dedupe.shingles("abcdef") == {"abcde", "bcdef"}
    assert dedupe.jaccard("abcdef", "abcdeg") == pytest.approx(1 / 3)
    assert dedupe.jaccard("짧은", "짧은") == 1.0


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.85, 0.95])
def test_bands_catch_a_pair_at_the_threshold(threshold: float) -> None:
    bands, rows = dedupe.bands_for(threshold)
    assert bands * rows <= dedupe.NUM_PERM
    assert 1 - (1 - threshold**rows) ** bands >= dedupe.MIN_RECALL
    fewer = dedupe.NUM_PERM // (rows + 1)
    assert 1 - (1 - threshold ** (rows + 1)) ** fewer < dedupe.MIN_RECALL  # rows is the most that works


def test_near_duplicates_point_to_the_first_kept_text() -> None:
    rng = random.Random(1)
    base = korean_text(rng, 400)
    edited = base[:200] + "한" + base[201:]  # one character changed
    different = korean_text(rng, 400)
    texts = [base, different, edited, base[:-3] + "끝."]
    found = dedupe.near_duplicates(texts, 0.85)
    assert sorted(found) == [2, 3]
    assert all(kept == 0 and similarity >= 0.85 for kept, similarity in found.values())
    assert found[2][1] == pytest.approx(dedupe.jaccard(base, edited))


def test_threshold_decides_between_similar_and_same() -> None:
    rng = random.Random(2)
    base = korean_text(rng, 300)
    half = base[:150] + korean_text(rng, 150)
    assert 0.3 < dedupe.jaccard(base, half) < 0.7
    assert dedupe.near_duplicates([base, half], 0.85) == {}
    assert list(dedupe.near_duplicates([base, half], 0.3)) == [1]


def test_many_texts_only_true_duplicates_found() -> None:
    rng = random.Random(3)
    texts = [korean_text(rng, rng.randint(50, 300)) for _ in range(2000)]
    originals = range(0, 2000, 100)
    copies = {2000 + n: i for n, i in enumerate(originals)}
    texts += [texts[i] + "." for i in originals]
    found = dedupe.near_duplicates(texts, 0.85)
    assert {i: kept for i, (kept, _) in found.items()} == copies
