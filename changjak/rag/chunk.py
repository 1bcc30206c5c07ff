"""Korean-aware chunking: split at sentence ends, pack whole sentences into chunks.

    >>> chunk("첫 문장입니다. 둘째 문장이에요! 셋째는?", max_chars=20)
    ['첫 문장입니다. 둘째 문장이에요!', '둘째 문장이에요! 셋째는?']

A sentence ends at ``. ! ? …`` (and their full-width forms) or a line break. Korean sentences
usually end in a verb ending such as ``-다.`` or ``-요.``; splitting at the punctuation keeps the
ending with its sentence, which an English-style word splitter would not care about, and never cuts
inside a syllable block. Paragraphs (blank lines) always end a chunk. A sentence longer than
``max_chars`` is cut at the last space before the limit. Consecutive chunks share ``overlap``
sentences so an answer that straddles a boundary is still found whole in one of them.
"""

from __future__ import annotations

import re
import unicodedata

_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])[\"'”’)\]]*\s+|\n+")
_PARAGRAPH = re.compile(r"\n\s*\n")


def sentences(text: str) -> list[str]:
    """``text`` split into sentences, whitespace trimmed, empty ones dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def _hard_split(sentence: str, max_chars: int) -> list[str]:
    parts = []
    while len(sentence) > max_chars:
        cut = sentence.rfind(" ", 0, max_chars + 1)
        cut = cut if cut > max_chars // 2 else max_chars
        parts.append(sentence[:cut].strip())
        sentence = sentence[cut:].strip()
    return parts + ([sentence] if sentence else [])


def chunk(text: str, *, max_chars: int = 500, overlap: int = 1) -> list[str]:
    """``text`` (NFC-normalised) as chunks of whole sentences, each at most ``max_chars`` long."""
    if max_chars < 20:
        raise ValueError("max_chars must be at least 20")
    chunks: list[str] = []
    for paragraph in _PARAGRAPH.split(unicodedata.normalize("NFC", text)):
        pieces = [p for s in sentences(paragraph) for p in _hard_split(s, max_chars)]
        current: list[str] = []
        for piece in pieces:
            if current and len(" ".join([*current, piece])) > max_chars:
                chunks.append(" ".join(current))
                kept = current[-overlap:] if overlap else []
                current = kept if len(" ".join([*kept, piece])) <= max_chars else []
            current.append(piece)
        if current:
            chunks.append(" ".join(current))
    return chunks
