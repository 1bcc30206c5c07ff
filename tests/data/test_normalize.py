"""Unicode and whitespace normalisation."""

from __future__ import annotations

import unicodedata

import pytest

from changjak.data.normalize import normalize_text


def test_decomposed_hangul_becomes_precomposed() -> None:
    decomposed = unicodedata.normalize("NFD", "한국어")
    assert len(decomposed) > 3
    assert normalize_text(decomposed) == "한국어"


@pytest.mark.parametrize(("raw", "expected"), [
    ("  앞뒤 공백  ", "앞뒤 공백"),
    ("여러\t\t 칸   공백", "여러 칸 공백"),
    ("윈도우\r\n줄바꿈\r옛 맥", "윈도우\n줄바꿈\n옛 맥"),
    ("줄 끝 공백   \n  다음 줄", "줄 끝 공백\n다음 줄"),
    ("문단\n\n\n\n\n다음 문단", "문단\n\n다음 문단"),
    ("폭\u200b없는\u200d문자\ufeff", "폭없는문자"),
    ("제어\x00문자\x07와\x1b삭제", "제어문자와삭제"),
    ("전각\u3000공백과\u00a0nbsp", "전각 공백과 nbsp"),
    ("\u2028줄 구분자\u2029", "줄 구분자"),
])
def test_whitespace_and_invisible_characters(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


def test_normalising_twice_changes_nothing() -> None:
    once = normalize_text(" 가\r\n\n\n나\t\u200b다 ")
    assert normalize_text(once) == once
