"""Helpers for the data-stage tests: write raw input files and build settings around them."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest


def write_jsonl(path: Path, items: list[Any]) -> Path:
    """One line per item: dicts and lists are dumped as JSON, strings are written as they are."""
    lines = [item if isinstance(item, str) else json.dumps(item, ensure_ascii=False) for item in items]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def korean_text(rng: random.Random, length: int) -> str:
    """Random Hangul 'words' (distinct enough that two of them are never near duplicates)."""
    words = ["".join(chr(rng.randrange(0xAC00, 0xD7A4)) for _ in range(rng.randint(1, 4)))
             for _ in range(length // 3)]
    return " ".join(words)[:length]


def chat(user: str, assistant: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


@pytest.fixture
def data_settings(make_settings, tmp_path: Path):
    """Settings reading ``inputs`` and writing to tmp_path/out; extra keyword args go to ``data``."""

    def make(*inputs: Path, **data: Any):
        return make_settings(data={"inputs": [str(p) for p in inputs], "out_dir": str(tmp_path / "out"), **data})

    return make
