"""Deterministic hash splits."""

from __future__ import annotations

from collections import Counter

from changjak.data import split


def test_same_id_same_split_and_position_in_unit_interval() -> None:
    ids = [f"{i:016x}" for i in range(200)]
    first = [split.assign(i, "salt", 0.1, 0.1) for i in ids]
    assert first == [split.assign(i, "salt", 0.1, 0.1) for i in ids]
    assert all(0 <= split.position(i, "salt") < 1 for i in ids)


def test_proportions_follow_the_fractions() -> None:
    counts = Counter(split.assign(f"id-{i}", "changjak-v1", 0.2, 0.1) for i in range(10_000))
    assert abs(counts["validation"] / 10_000 - 0.2) < 0.02
    assert abs(counts["test"] / 10_000 - 0.1) < 0.02
    assert counts["train"] + counts["validation"] + counts["test"] == 10_000


def test_salt_reshuffles_and_zero_fractions_keep_everything_in_train() -> None:
    ids = [f"id-{i}" for i in range(500)]
    a = [split.assign(i, "a", 0.3, 0.3) for i in ids]
    b = [split.assign(i, "b", 0.3, 0.3) for i in ids]
    assert sum(x != y for x, y in zip(a, b, strict=True)) > 100
    assert {split.assign(i, "a", 0.0, 0.0) for i in ids} == {"train"}
