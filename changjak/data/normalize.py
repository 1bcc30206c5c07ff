"""Text normalisation applied to every string field before validation.

Unicode NFC (so a syllable typed as separate jamo equals the precomposed one), one kind of
newline, no zero-width or control characters, runs of spaces and tabs collapsed to one space,
at most one blank line between paragraphs, no spaces around line ends, stripped ends.
"""

from __future__ import annotations

import re
import unicodedata

_NEWLINES = re.compile(r"\r\n|[\r\u2028\u2029\x0b\x0c\x85]")
_INVISIBLE = re.compile(r"[\u200b\u200c\u200d\u2060\ufeff\u00ad\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]")
_SPACES = re.compile(r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
_SPACE_AT_LINE_END = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """The canonical form of ``text`` used for training, hashing and deduplication."""
    text = unicodedata.normalize("NFC", text)
    text = _NEWLINES.sub("\n", text)
    text = _INVISIBLE.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _SPACE_AT_LINE_END.sub("\n", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()
