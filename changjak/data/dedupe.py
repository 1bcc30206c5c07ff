"""Exact and near-duplicate detection.

Exact: the sha256 of the canonical JSON of the normalised messages.

Near: MinHash over the set of character 5-grams of each text, LSH banding to find candidate pairs
in about linear time, then the exact Jaccard similarity of the two 5-gram sets decides. Records
are visited in input order and each is compared with the ones already kept, so the first of a
group of near duplicates survives and the result does not depend on anything but the input.
The hashes are numpy uint64 arithmetic that wraps: 20k texts take a few seconds on one core.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:
    import numpy as np

SHINGLE = 5
NUM_PERM = 128
MIN_RECALL = 0.99  # chance that a pair exactly at the threshold becomes a candidate
_PRIME = 0x100000001B3  # FNV-1a 64-bit prime, for the rolling 5-gram hash
_MIX = 0x9E3779B97F4A7C15  # golden-ratio multiplier, spreads 5-gram hashes before the 32-bit cut


def exact_key(messages: list[dict[str, str]]) -> str:
    """The sha256 of a conversation's canonical JSON; equal conversations get equal keys."""
    canonical = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def shingles(text: str) -> set[str]:
    """The character 5-grams of ``text`` (the whole text if it is shorter)."""
    if len(text) <= SHINGLE:
        return {text}
    return {text[i:i + SHINGLE] for i in range(len(text) - SHINGLE + 1)}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def bands_for(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows): the most rows per band that still catch a pair at ``threshold`` with MIN_RECALL."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= MIN_RECALL:
            best = (bands, rows)
    return best


def _signature(text: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import numpy as np

    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    width = min(SHINGLE, len(codes))
    count = len(codes) - width + 1
    rolling = np.zeros(count, dtype=np.uint64)
    for j in range(width):
        rolling = rolling * np.uint64(_PRIME) + codes[j:j + count]
    keys = np.unique(rolling * np.uint64(_MIX) >> np.uint64(32))
    # Multiply-add-shift hashing: one universal hash per permutation, min over the 5-grams.
    return ((keys[:, None] * a[None, :] + b[None, :]) >> np.uint64(32)).min(axis=0)


def near_duplicates(texts: Sequence[str], threshold: float, *, seed: int = 0) -> dict[int, tuple[int, float]]:
    """For each text that nearly duplicates an earlier kept one: index -> (kept index, Jaccard)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, NUM_PERM, dtype=np.uint64)
    bands, rows = bands_for(threshold)
    buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
    duplicates: dict[int, tuple[int, float]] = {}
    for i, text in enumerate(tqdm(texts, desc="near duplicates", unit=" rec", disable=None)):
        sig = _signature(text, a, b)
        keys = [sig[band * rows:(band + 1) * rows].tobytes() for band in range(bands)]
        candidates = sorted({k for band, key in enumerate(keys) for k in buckets[band].get(key, ())})
        match = next(((k, s) for k in candidates if (s := jaccard(texts[k], text)) >= threshold), None)
        if match is not None:
            duplicates[i] = match
            continue
        for band, key in enumerate(keys):
            buckets[band].setdefault(key, []).append(i)
    return duplicates
