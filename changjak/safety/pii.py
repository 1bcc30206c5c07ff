"""Korean PII: find and mask resident registration numbers, phone numbers, emails and card numbers.

    >>> mask("연락처는 010-1234-5678 입니다").text
    '연락처는 <전화번호> 입니다'

Each kind is a regular expression for the shapes people write plus a validator that rejects
look-alikes (a date check and checksum for 주민등록번호, the Luhn check for card numbers), so
ordinary numbers such as years, prices and dates stay untouched. A :class:`Finding` carries the
kind and the span only, never the matched value, so findings are safe to log.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

PLACEHOLDERS = {
    "rrn": "<주민등록번호>",
    "phone": "<전화번호>",
    "email": "<이메일>",
    "card": "<카드번호>",
}

# Digits glued to a match on either side mean it is part of a longer number, not PII.
_B = r"(?<![0-9A-Za-z])"
_E = r"(?![0-9A-Za-z])"
_SEP = r"[ .-]?"

# ASCII-only edges: Korean text often runs straight on ("abc@naver.com입니다").
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
                    r"(?![A-Za-z0-9-])")
# YYMMDD, then G (sex/century digit) and six more digits; "-", " - ", " " or nothing between.
_RRN = re.compile(_B + r"\d{6}(?:\s*-\s*|\s)?[0-9]\d{6}" + _E)
# 010-1234-5678, 01012345678, 010 1234 5678, +82 10-1234-5678, +82(0)10..., 011-123-4567.
_MOBILE = re.compile(r"(?:(?<![0-9A-Za-z+])\+82[ -]?(?:\(0\))?|" + _B + r"0)1[016789]"
                     + _SEP + r"\d{3,4}" + _SEP + r"\d{4}" + _E)
# 02-123-4567, 031-123-4567, (02) 1234-5678, 070-1234-5678, +82 2-123-4567.
_AREA = r"(?:2|[3-6][1-5]|70)"
_LANDLINE = re.compile(r"(?:(?<![0-9A-Za-z+])\+82[ -]?(?:\(0\))?" + _AREA + "|" + _B + r"0" + _AREA
                       + r"|(?<![0-9A-Za-z])\(0" + _AREA + r"\)\s?)"
                       + _SEP + r"\d{3,4}" + _SEP + r"\d{4}" + _E)
# 16 digits in groups of four, Amex 4-6-5, or 13-19 digits written together.
_CARD = re.compile(_B + r"(?:\d{4}(?:[ -]?\d{4}){3}|\d{4}[ -]?\d{6}[ -]?\d{5}|\d{13,19})" + _E)

_RRN_WEIGHTS = (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)
# The 7th digit: sex and century of birth (1-4 citizens, 5-8 foreign residents; 9/0 = 1800s, not used).
_CENTURY = {"1": 1900, "2": 1900, "5": 1900, "6": 1900, "3": 2000, "4": 2000, "7": 2000, "8": 2000}
_RANDOM_SERIALS_FROM = date(2020, 10, 1)  # numbers issued since then end in random digits
_RRN_HYPHEN = re.compile(r"\d{6}\s*-\s*\d{7}")


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class MaskResult:
    text: str
    counts: dict[str, int]


def _digits(value: str) -> str:
    return "".join(c for c in value if c.isdigit())


def _valid_rrn(value: str) -> bool:
    d = _digits(value)
    if d[6] not in _CENTURY:
        return False
    try:
        born = date(_CENTURY[d[6]] + int(d[0:2]), int(d[2:4]), int(d[4:6]))
    except ValueError:
        return False
    # Numbers issued (or re-issued) since October 2020 carry no checksum, whatever the birth date,
    # so the written shape YYMMDD-GNNNNNN with a real date is enough; 13 bare digits also need
    # the checksum unless the birth date itself is that recent.
    if born >= _RANDOM_SERIALS_FROM or _RRN_HYPHEN.fullmatch(value.strip()):
        return True
    total = sum(int(c) * w for c, w in zip(d, _RRN_WEIGHTS, strict=False))
    resident = (11 - total % 11) % 10
    foreigner = (13 - total % 11) % 10  # 외국인등록번호 (G = 5..8) before October 2020
    return int(d[12]) == resident or (d[6] in "5678" and int(d[12]) == foreigner)


def _luhn(value: str) -> bool:
    d = _digits(value)
    total = 0
    for i, c in enumerate(reversed(d)):
        n = int(c) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _always(_: str) -> bool:
    return True


# Earlier kinds win when two matches overlap (a valid RRN can also pass the Luhn check).
_DETECTORS: tuple[tuple[str, re.Pattern[str], Callable[[str], bool]], ...] = (
    ("email", _EMAIL, _always),
    ("rrn", _RRN, _valid_rrn),
    ("card", _CARD, _luhn),
    ("phone", _MOBILE, _always),
    ("phone", _LANDLINE, _always),
)


def find(text: str) -> list[Finding]:
    """Non-overlapping PII spans in ``text``, in order of appearance."""
    candidates = []
    for priority, (kind, pattern, valid) in enumerate(_DETECTORS):
        for m in pattern.finditer(text):
            if valid(m.group()):
                candidates.append((m.start(), priority, m.end(), kind))
    findings: list[Finding] = []
    taken: list[tuple[int, int]] = []
    for start, _, end, kind in sorted(candidates, key=lambda c: (c[1], c[0])):
        if all(end <= s or start >= e for s, e in taken):
            taken.append((start, end))
            findings.append(Finding(kind, start, end))
    return sorted(findings, key=lambda f: f.start)


def mask(text: str) -> MaskResult:
    """``text`` with every finding replaced by its placeholder, and how many of each kind."""
    findings = find(text)
    parts, last = [], 0
    for f in findings:
        parts += [text[last:f.start], PLACEHOLDERS[f.kind]]
        last = f.end
    parts.append(text[last:])
    return MaskResult("".join(parts), dict(Counter(f.kind for f in findings)))
