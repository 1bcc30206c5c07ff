"""Fold Korean text into a matching form that sees through the usual disguises.

    >>> normalize_for_matching("씨.1.발 ㅅ1발 시이이발")
    '씨발시발시발'

Filters are beaten by writing the same word differently: full-width or circled letters, stray
spaces, dots and digits inside a word (``씨 발``, ``시1발``), letters spelled out as jamo
(``ㅅㅣㅂㅏㄹ``), Latin or digit look-alikes (``ㅅl발``, ``1gn0re``), zero-width characters and
stretched letters (``씨이이발``, ``씨발발발``). :func:`normalize` undoes these in one pass:

1. NFKC, lower case, accents and invisible characters dropped, Cyrillic/Greek/Hanja look-alikes
   mapped, and every jamo turned into its compatibility form (``ㄱ``), so chosung-only spellings
   such as ``ㅅㅂ`` and ``ㅈㄴ`` stay matchable as written.
2. Digits: ``18``/``10`` touching Hangul read as ``십팔``/``십`` (``아18``, ``10새``); a ``1 l i | !``
   between a lone consonant and a syllable reads as ``ㅣ`` (``ㅅ1발``), a ``c`` before a syllable as
   ``씨`` (``c발``); next to Latin letters the
   leet digits and symbols become letters (``1gn0r3`` → ``ignore``; ``l`` and ``1`` fold to ``i``).
3. Separators go: whitespace, punctuation and symbols always; digits or Latin letters wedged between
   Hangul too (``시1발``, ``씨x발``, ``씨 1 발``), but not a number set off by spaces (``미친 2018년``).
4. Loose jamo are assembled into syllables and leftover vowels between syllables dropped.
5. Repeats collapse (``ㅋㅋㅋ`` → ``ㅋ``, ``씨이이발`` → ``씨발``, ``조온나`` → ``존나``); digits stay.

The result is a skeleton for comparison, not for display: always normalise the patterns with the
same function and compare skeletons. :class:`Normalized` keeps, for each output character, the span
of the original text it came from (for masking) and whether a whitespace word break preceded it.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from itertools import groupby

CHO = "ㄱㄲㄴㄷㄸㄹㅁㅂㅃㅅㅆㅇㅈㅉㅊㅋㅌㅍㅎ"
JUNG = "ㅏㅐㅑㅒㅓㅔㅕㅖㅗㅘㅙㅚㅛㅜㅝㅞㅟㅠㅡㅢㅣ"
JONG = ("", *"ㄱㄲㄳㄴㄵㄶㄷㄹㄺㄻㄼㄽㄾㄿㅀㅁㅂㅄㅅㅆㅇㅈㅊㅋㅌㅍㅎ")
_COMPOUND_VOWEL = {"ㅗㅏ": "ㅘ", "ㅗㅐ": "ㅙ", "ㅗㅣ": "ㅚ", "ㅜㅓ": "ㅝ", "ㅜㅔ": "ㅞ", "ㅜㅣ": "ㅟ", "ㅡㅣ": "ㅢ"}
# Conjoining jamo (what NFKC turns compatibility jamo into) back to the compatibility block.
_CONJOINING = {chr(0x1100 + i): c for i, c in enumerate(CHO)}
_CONJOINING |= {chr(0x1161 + i): c for i, c in enumerate(JUNG)}
_CONJOINING |= {chr(0x11A8 + i): c for i, c in enumerate(JONG[1:])}
_INVISIBLE = set("\u115f\u1160\u3164\uffa0\u00ad\u034f\u180e")  # Hangul fillers, soft hyphen, ...
_LOOKALIKE = str.maketrans({
    "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t",
    "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s", "α": "a", "ε": "e", "ι": "i", "κ": "k", "ν": "v",
    "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "人": "ㅅ", "口": "ㅁ", "己": "ㄹ", "卜": "ㅏ",
    "丨": "ㅣ", "ト": "ㅏ", "ㄧ": "ㅣ",
})
_LEET = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i", "|": "i"}
_AS_VOWEL_I = set("1li|!")
_KOREAN_NUMBERS = {"18": ("십", "팔"), "10": ("십",)}

# Unit kinds.
SYL, CONS, VOWEL, LATIN, DIGIT, SPACE, MARK, OTHER = range(8)
_HANGUL = (SYL, CONS, VOWEL)
_GAP = (SPACE, MARK, DIGIT, LATIN)


@dataclass(frozen=True, slots=True)
class Normalized:
    """The matching form of a text and how each of its characters maps back to the original."""

    text: str
    starts: tuple[int, ...]  # original index where output char i begins
    ends: tuple[int, ...]  # original index just past output char i
    word_starts: frozenset[int]  # output positions that follow whitespace (or open the text)

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original ``[start, end)`` span covered by output characters ``start..end-1``."""
        return self.starts[start], self.ends[end - 1]

    def is_word_end(self, end: int) -> bool:
        return end >= len(self.text) or end in self.word_starts


def normalize_for_matching(text: str) -> str:
    return normalize(text).text


def chosung(text: str) -> str:
    """Each Hangul syllable replaced by its initial consonant (``시발`` → ``ㅅㅂ``)."""
    return "".join(CHO[(ord(c) - 0xAC00) // 588] if "가" <= c <= "힣" else c for c in text)


def decompose(syllable: str) -> tuple[str, str, str]:
    index = ord(syllable) - 0xAC00
    return CHO[index // 588], JUNG[index % 588 // 28], JONG[index % 28]


def compose(cho: str, jung: str, jong: str = "") -> str:
    return chr(0xAC00 + (CHO.index(cho) * 21 + JUNG.index(jung)) * 28 + JONG.index(jong))


@lru_cache(maxsize=8192)
def _fold(char: str) -> tuple[tuple[str, int], ...]:
    """One original character as (char, kind) units after NFKC, case and look-alike folding."""
    if char in _INVISIBLE or unicodedata.category(char) == "Cf":
        return ()
    units = []
    for c in unicodedata.normalize("NFKC", char).lower().translate(_LOOKALIKE):
        c = _CONJOINING.get(c, c)
        if not "가" <= c <= "힣":
            c = "".join(d for d in unicodedata.normalize("NFD", c) if not unicodedata.combining(d)) or c
        for d in c:
            units.append((d, _kind(d)))
    return tuple(units)


def _kind(c: str) -> int:
    if "가" <= c <= "힣":
        return SYL
    if c in CHO or c in JONG:
        return CONS
    if c in JUNG:
        return VOWEL
    if "a" <= c <= "z":
        return LATIN
    if "0" <= c <= "9":
        return DIGIT
    if c.isspace():
        return SPACE
    return OTHER if c.isalpha() else MARK


@lru_cache(maxsize=256)  # the request-side checks each normalise the same prompt
def normalize(text: str) -> Normalized:
    """The matching form of ``text`` (see the module docstring for each step)."""
    # A unit is [char, kind, start, end, follows_space].
    units = [[c, k, i, i + 1, False] for i, ch in enumerate(text) for c, k in _fold(ch)]
    units = _read_digits(units)
    units = _drop_separators(units)
    units = _assemble_jamo(units)
    units = _collapse(units)
    return Normalized("".join(u[0] for u in units), tuple(u[2] for u in units),
                      tuple(u[3] for u in units), frozenset(i for i, u in enumerate(units) if u[4]))


def _neighbour(units: list, i: int, step: int) -> int:
    j = i + step
    return units[j][1] if 0 <= j < len(units) else SPACE


def _read_digits(units: list) -> list:
    out, i = [], 0
    while i < len(units):
        j = i + 1
        if units[i][1] == DIGIT:
            while j < len(units) and units[j][1] == DIGIT:
                j += 1
            run = "".join(u[0] for u in units[i:j])
            if run in _KOREAN_NUMBERS and (_neighbour(units, i, -1) in _HANGUL or _neighbour(units, j - 1, 1) in _HANGUL):
                syllables = _KOREAN_NUMBERS[run]
                out += [[s, SYL, units[i + n][2], units[j - 1][3] if n == len(syllables) - 1 else units[i + n][3],
                         False] for n, s in enumerate(syllables)]
                i = j
                continue
        for k in range(i, j):
            out.append(_read_char(units, k))
        i = j
    return out


def _read_char(units: list, i: int) -> list:
    c, _, start, end, _ = units[i]
    if c in _AS_VOWEL_I and _neighbour(units, i, -1) == CONS and _neighbour(units, i, 1) == SYL:
        return ["ㅣ", VOWEL, start, end, False]
    if c == "c" and _neighbour(units, i, 1) == SYL and _neighbour(units, i, -1) != LATIN:
        return ["씨", SYL, start, end, False]  # "c발", "아c바"
    if c in _LEET and LATIN in (_neighbour(units, i, -1), _neighbour(units, i, 1)):
        return [_LEET[c], LATIN, start, end, False]
    if c == "l":
        return ["i", LATIN, start, end, False]
    return units[i]


def _drop_separators(units: list) -> list:
    """Remove whitespace, marks, and digits/Latin wedged inside Hangul words; mark word starts."""
    out, spaced, i = [], True, 0
    while i < len(units):
        if units[i][1] not in _GAP:
            units[i][4], spaced = spaced, False
            out.append(units[i])
            i += 1
            continue
        j = i
        while j < len(units) and units[j][1] in _GAP:
            j += 1
        gap = units[i:j]
        has_space = any(u[1] == SPACE for u in gap)
        inside_word = bool(out) and out[-1][1] in _HANGUL and j < len(units) and units[j][1] in _HANGUL
        pieces = [(is_text, list(piece)) for is_text, piece in groupby(gap, key=lambda u: u[1] in (DIGIT, LATIN))]
        for n, (is_text, piece) in enumerate(pieces):
            isolated = 0 < n < len(pieces) - 1 and len(piece) == 1  # "씨 1 발"
            if not is_text:
                spaced = spaced or any(u[1] == SPACE for u in piece)
            elif not (inside_word and (isolated or not has_space)):
                piece[0][4], spaced = spaced, False
                out += piece
        i = j
    return out


def _assemble_jamo(units: list) -> list:
    out, i = [], 0
    while i < len(units):
        unit = units[i]
        if unit[1] == CONS and unit[0] in CHO and _neighbour(units, i, 1) == VOWEL:
            vowel, end, j = units[i + 1][0], units[i + 1][3], i + 2
            if j < len(units) and units[j][1] == VOWEL and vowel + units[j][0] in _COMPOUND_VOWEL:
                vowel, end, j = _COMPOUND_VOWEL[vowel + units[j][0]], units[j][3], j + 1
            final = ""
            if j < len(units) and units[j][1] == CONS and units[j][0] in JONG and _neighbour(units, j, 1) != VOWEL:
                final, end, j = units[j][0], units[j][3], j + 1
            out.append([compose(unit[0], vowel, final), SYL, unit[2], end, unit[4]])
            i = j
            continue
        if unit[1] == VOWEL and out and out[-1][1] == SYL and _neighbour(units, i, 1) == SYL:
            out[-1][3] = unit[3]  # a stray vowel inside a word: filler
        else:
            out.append(unit)
        i += 1
    return out


def _collapse(units: list) -> list:
    out = []
    for unit in units:
        merged = out and not unit[4] and unit[1] != DIGIT and _stretch(out[-1][0], unit[0])
        if merged:
            out[-1][0], out[-1][3] = merged, unit[3]
        else:
            out.append(unit)
    return out


def _stretch(prev: str, c: str) -> str | None:
    """``prev`` with ``c`` folded in when ``c`` only stretches it, else None.

    The same character again (``ㅋㅋ``, ``발발``), its vowel again (``씨ㅣ``), or ㅇ + its vowel after an
    open syllable, the final moving over (``씨이`` → ``씨``, ``조온`` → ``존``).
    """
    if c == prev:
        return prev
    if not ("가" <= prev <= "힣" and (c in JUNG or "가" <= c <= "힣")):
        return None
    p_cho, p_jung, p_jong = decompose(prev)
    if p_jong:
        return None
    if c == p_jung:
        return prev
    if "가" <= c <= "힣":
        cho, jung, jong = decompose(c)
        if cho == "ㅇ" and jung == p_jung:
            return compose(p_cho, p_jung, jong)
    return None
