"""Deterministic train/validation/test assignment by hash.

A record's split depends only on its id (the hash of its content) and ``data.split_salt``: the
same record lands in the same split on every run and machine, adding records never moves the
old ones, and changing the salt reshuffles everything.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "validation", "test")


def position(record_id: str, salt: str) -> float:
    """A number in [0, 1) drawn from sha256(salt + id)."""
    digest = hashlib.sha256((salt + record_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(record_id: str, salt: str, val_fraction: float, test_fraction: float) -> str:
    """The split ``record_id`` belongs to: test below test_fraction, then validation, then train."""
    x = position(record_id, salt)
    if x < test_fraction:
        return "test"
    if x < test_fraction + val_fraction:
        return "validation"
    return "train"
