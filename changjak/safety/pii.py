"""Korean PII: find and mask registration numbers, phones, emails, cards, accounts, passports and more.

    >>> mask("연락처는 010-1234-5678 입니다").text
    '연락처는 <전화번호> 입니다'

How a span is found, in four steps:

1. The text is folded one character for one (full-width digits and letters, dashes, 'ㅡ' typed as
   a dash, ideographic spaces), so spans in the folded copy are spans in the original.
2. Each shape has a regular expression and a validator that names the kind and gives a base score:
   real birth dates and the 주민등록번호 checksum, Luhn and issuer prefixes for cards, the National
   Tax Service check digit for 사업자등록번호, region codes for licences, octet ranges for IPs.
3. Labels move the score: a context word of the kind within a few words (주민번호, 계좌, 여권 …)
   adds CONTEXT_BOOST; the label of a number that is not PII right beside the span (주문번호, 송장,
   버전 …) takes OTHER_LABEL_PENALTY off. Shapes that mean nothing alone (bare digit runs,
   old-format passports) start below MIN_SCORE and need a context word.
4. Spans scoring MIN_SCORE or more are kept; where two overlap the higher score wins.

A Finding holds the kind, span and score, never the value, so findings are safe to log. Masking
with ``reversible=`` keeps values (only of kinds the policy allows) in a PiiVault that never prints,
logs or pickles them.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import date

from changjak.errors import ConfigError

PLACEHOLDERS = {
    "rrn": "<주민등록번호>",
    "frn": "<외국인등록번호>",
    "phone": "<전화번호>",
    "email": "<이메일>",
    "card": "<카드번호>",
    "account": "<계좌번호>",
    "passport": "<여권번호>",
    "driver_license": "<운전면허번호>",
    "brn": "<사업자등록번호>",
    "ip": "<IP주소>",
}
KINDS = tuple(PLACEHOLDERS)
# 고유식별정보 (PIPA art. 24) and payment numbers are never handed back, whatever a caller asks.
NEVER_REVERSIBLE = frozenset({"rrn", "frn", "card", "account", "passport", "driver_license"})

MIN_SCORE = 0.5
CONTEXT_BOOST = 0.35  # lifts a 0.2 bare digit run over MIN_SCORE, as Presidio's enhancer does
OTHER_LABEL_PENALTY = 0.45  # sinks even a checksum-valid 13-digit run labelled 주문번호

CONTEXT = {
    "rrn": ("주민등록", "주민번호", "주민 번호", "주민", "생년월일", "본인확인", "본인 확인", "실명", "신분"),
    "frn": ("외국인등록", "외국인 등록", "외국인번호", "외국인", "등록번호", "체류", "alien registration"),
    "phone": ("전화", "연락", "휴대폰", "핸드폰", "휴대전화", "폰", "문자", "카톡", "tel", "phone", "mobile"),
    "email": ("이메일", "메일", "email", "e-mail"),
    "card": ("카드", "결제", "card", "visa", "master", "amex", "할부"),
    "account": ("계좌", "통장", "입금", "송금", "이체", "예금주", "은행", "뱅크", "환불", "보내", "bank",
                "농협", "국민", "신한", "우리", "하나", "기업", "우체국", "새마을", "신협", "수협", "씨티",
                "sc제일", "카카오", "토스", "kb", "nh", "ibk"),
    "passport": ("여권", "passport", "비자", "visa", "출국", "입국", "출입국", "항공권", "탑승", "영사"),
    "driver_license": ("운전면허", "면허", "운전", "driver", "license", "licence"),
    "brn": ("사업자", "법인", "상호", "대표자", "세금계산서", "부가세", "(주)", "㈜", "주식회사", "거래처", "상회", "업체",
            "business"),
    "ip": ("ip", "아이피", "서버", "접속", "호스트", "host", "방화벽", "로그인", "주소", "address", "dns", "ping",
           "게이트웨이", "gateway", "라우터", "공유기", "http", "ssh"),
}
# Labels of numbers that are not personal; one right beside a span says what the span is.
OTHER_LABELS = ("주문번호", "주문 번호", "송장", "운송장", "등기번호", "택배번호", "접수번호", "예약번호", "일련번호",
                "시리얼", "serial", "모델", "model", "제품번호", "상품번호", "상품코드", "결제번호", "승인번호",
                "관리번호", "문의번호", "티켓", "isbn", "바코드", "barcode", "버전", "version", "빌드", "build",
                "업데이트", "update", "릴리스", "release", "패치", "patch", "펌웨어", "firmware", "좌표")
_BEFORE, _AFTER, _LABEL_GAP = 30, 20, 8

# One character for one: full-width ASCII, dashes (and the vowel ㅡ typed as one), odd spaces.
_FOLD = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}
_FOLD |= {ord(c): "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u3161"}
_FOLD |= {ord(c): " " for c in "\u00a0\u2009\u202f\u3000"} | {0xB7: "."}

# Digits or letters glued on, or a separator and more digits, mean part of a longer token.
_B = r"(?<![0-9A-Za-z])(?<![0-9][-.])"
_E = r"(?![0-9A-Za-z])(?![-.][0-9])"
# Identifiers whose shape is distinctive and checked (mobile numbers, resident and card numbers) are
# found glued to Latin letters too ("tel010-...", "id900101-..."): only digits around end them.
_BL = r"(?<![0-9])(?<![0-9][-.])"
_EL = r"(?![0-9])(?![-.][0-9])"
_SEP = r"(?: ?[-.] ?| )?"
_ID_SEP = r"(?: ?- ?| )?"
_INTL = r"(?<![0-9A-Za-z+])\(?\+ ?82\)?[ -]?(?:\(0\) ?)?0?"
_AREA = r"(?:2|3[1-3]|4[1-4]|5[1-5]|6[1-4]|70|50[2-8])"
_REGIONS = {"서울": "11", "부산": "12", "경기": "13", "강원": "14", "충북": "15", "충남": "16", "전북": "17",
            "전남": "18", "경북": "19", "경남": "20", "제주": "21", "대구": "22", "인천": "23", "광주": "24",
            "대전": "25", "울산": "26", "경기북부": "28"}
_LICENSE_CODES = frozenset(_REGIONS.values())
# Account layouts Korean banks print: KB/우체국 6-2-6, 신한/케이 3-3-6, 우리 4-3-6, 하나 3-6-5,
# 농협/부산 3-4-4-2, 기업 3-6-2-3, 카카오 4-2-7, 토스 4-4-4, SC 3-2-6, 새마을 4-4-4-1 and a few more.
_ACCOUNT_LAYOUTS = ((6, 2, 6), (3, 6, 5), (4, 4, 5), (3, 2, 6), (3, 3, 6), (4, 3, 6), (3, 4, 4, 2),
                    (3, 6, 2, 3), (4, 2, 7), (4, 4, 4), (3, 6, 3), (4, 4, 4, 1), (3, 2, 6, 1), (3, 2, 7),
                    (3, 2, 4, 3))
_LAYOUT_RE = "|".join(r"(?: ?- ?| )".join(f"[0-9]{{{n}}}" for n in layout) for layout in _ACCOUNT_LAYOUTS)

_RRN_WEIGHTS = (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)
_BRN_WEIGHTS = (1, 3, 7, 1, 3, 7, 1, 3, 5)
# The 7th digit: sex and century of birth (1-4 citizens, 5-8 foreign residents).
_CENTURY = {"1": 1900, "2": 1900, "5": 1900, "6": 1900, "3": 2000, "4": 2000, "7": 2000, "8": 2000}


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class MaskResult:
    text: str
    counts: Counter[str]
    vault: PiiVault | None = None


Verdict = tuple[str, float] | None  # (kind, base score), or None for a look-alike


def _digits(value: str) -> str:
    return "".join(c for c in value if c.isdigit())


def _registration(value: str) -> Verdict:
    d = _digits(value)
    kind = "rrn" if d[6] in "1234" else "frn"
    try:
        born = date(_CENTURY[d[6]] + int(d[:2]), int(d[2:4]), int(d[4:6]))
    except ValueError:
        return None
    if born > date.today():
        return None
    total = sum(int(c) * w for c, w in zip(d, _RRN_WEIGHTS, strict=False))
    check = (11 - total % 11) % 10 if kind == "rrn" else (13 - total % 11) % 10
    if int(d[12]) == check:
        return kind, 0.9
    # Numbers issued since October 2020 end in random digits, so a real birth date and sex digit
    # are all there is to check; an order number that starts with a date is sunk by its label.
    return kind, 0.75 if len(d) != len(value) else 0.5


def _card(value: str) -> Verdict:
    d = _digits(value)
    issuer = d[0] in "34569" or 2221 <= int(d[:4]) <= 2720
    doubled = (int(c) * (1 + i % 2) for i, c in enumerate(reversed(d)))
    if not issuer or sum(n - 9 if n > 9 else n for n in doubled) % 10:
        return None
    if len(d) != len(value):
        return "card", 0.85
    return "card", 0.6 if len(d) in (15, 16) else 0.3


def _brn(value: str) -> Verdict:
    d = _digits(value)
    if d[:3] < "101" or d[3:5] == "00" or d[5:9] == "0000":
        return None
    total = sum(int(c) * w for c, w in zip(d, _BRN_WEIGHTS, strict=False)) + int(d[8]) * 5 // 10
    if (10 - total % 10) % 10 != int(d[9]):
        return None
    return "brn", 0.7 if len(d) != len(value) else 0.3


def _license(value: str) -> Verdict:
    if value[0] in "0123456789":
        d = _digits(value)
        if d[:2] not in _LICENSE_CODES:
            return None
        return "driver_license", 0.7 if len(d) != len(value) else 0.3
    return "driver_license", 0.8  # the region spelled out: 서울 12-345678-90


def _passport(value: str) -> Verdict:
    if value.islower():
        return "passport", 0.15  # typed in lower case: only with a label
    return "passport", 0.6 if value[4].isalpha() else 0.35  # M123A4567 since Dec 2021, M12345678 before


def _account(value: str) -> Verdict:
    if "-" in value:  # a bank's printed layout; 4-4-4 is also how couriers print tracking numbers
        return "account", 0.3 if re.fullmatch(r"[0-9]{4} ?- ?[0-9]{4} ?- ?[0-9]{4}", value) else 0.5
    return "account", 0.3 if " " in value else 0.2


def _ipv4(value: str) -> Verdict:
    octets = [int(octet) for octet in value.split(".")]
    if max(octets) > 255 or _nobody(ipaddress.IPv4Address(value)):
        return None
    return "ip", 0.6 if max(octets) >= 30 else 0.35  # 1.2.10.3 is more often a version: needs a label


def _ipv6(value: str) -> Verdict:
    try:
        address = ipaddress.IPv6Address(value)
    except ValueError:
        return None
    return None if _nobody(address) else ("ip", 0.7)


def _nobody(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback and "any" addresses (127.0.0.1, 0.0.0.0, ::1) point at no person: a server's own bind address."""
    return address.is_loopback or address.is_unspecified


def _fixed(kind: str, score: float) -> Callable[[str], Verdict]:
    return lambda _: (kind, score)


# (kinds it can yield, pattern over the folded text, validator)
_DETECTORS: tuple[tuple[frozenset[str], re.Pattern[str], Callable[[str], Verdict]], ...] = tuple(
    (frozenset(kinds), re.compile(pattern, re.ASCII), check) for kinds, pattern, check in (
        (("email",), r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
         r"(?![A-Za-z0-9-])", _fixed("email", 0.9)),
        (("rrn", "frn"), _BL + r"[0-9]{6}" + _ID_SEP + r"[1-8][0-9]{6}" + _EL, _registration),
        (("card",), _BL + r"(?:[0-9]{4}(?:[ .-]?[0-9]{4}){3}|[0-9]{4}[ -]?[0-9]{6}[ -]?[0-9]{4,5}"
         r"|[0-9]{13,19})" + _EL, _card),
        (("phone",), r"(?:" + _INTL + r"|" + _BL + r"\(?0)1[016789]\)?" + _SEP + r"[0-9]{3,4}" + _SEP
         + r"[0-9]{4}" + _EL, _fixed("phone", 0.8)),
        (("phone",), r"(?:" + _INTL + r"|" + _B + r"\(?0)" + _AREA + r"\)?" + _SEP + r"[0-9]{3,4}" + _SEP
         + r"[0-9]{4}" + _E, _fixed("phone", 0.7)),
        (("brn",), _B + r"[0-9]{3}" + _ID_SEP + r"[0-9]{2}" + _ID_SEP + r"[0-9]{5}" + _E, _brn),
        (("driver_license",), r"(?:" + _B + r"(?:" + "|".join(sorted(_REGIONS, key=len, reverse=True))
         + r") ?-? ?|" + _B + r"[0-9]{2}" + _ID_SEP + r")[0-9]{2}" + _ID_SEP + r"[0-9]{6}" + _ID_SEP
         + r"[0-9]{2}" + _E, _license),
        (("passport",), r"(?<![0-9A-Za-z])(?:[MSRODGT](?:[0-9]{8}|[0-9]{3}[A-Z][0-9]{4})"
         r"|[msrodgt](?:[0-9]{8}|[0-9]{3}[a-z][0-9]{4}))(?![0-9A-Za-z])", _passport),
        (("account",), _B + r"(?<![0-9] )(?:" + _LAYOUT_RE + r"|[0-9]{10,14})" + _E + r"(?! [0-9])",
         _account),
        (("ip",), r"(?<![0-9A-Za-z.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9A-Za-z]|\.[0-9])", _ipv4),
        (("ip",), r"(?<![0-9A-Za-z:.])(?=[0-9A-Fa-f]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]{3,39}"
         r"(?:(?<=:)[0-9]{1,3}(?:\.[0-9]{1,3}){3})?(?![0-9A-Za-z:.])", _ipv6),
    ))


def _words(words: Collection[str]) -> re.Pattern[str]:
    return re.compile("|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)), re.IGNORECASE)


_CONTEXT_RE = {kind: _words(words) for kind, words in CONTEXT.items()}
_OTHER_RE = _words(OTHER_LABELS)


def _score(kind: str, base: float, folded: str, start: int, end: int) -> float:
    """``base`` moved by the labels around ``folded[start:end]``: the nearest one before decides."""
    before = folded[max(0, start - _BEFORE):start]
    other = max((m.end() for m in _OTHER_RE.finditer(before)), default=-1)
    own = max((m.end() for m in _CONTEXT_RE[kind].finditer(before)), default=-1)
    label_after = _OTHER_RE.search(folded, end, end + _AFTER)  # 2.1.0.3 버전, 2.1.0.3으로 업데이트
    label_after = label_after is not None and label_after.start() - end <= _LABEL_GAP // 2
    if (other > own and len(before) - other <= _LABEL_GAP) or label_after:
        return round(max(0.0, base - OTHER_LABEL_PENALTY), 2)
    if own >= 0 or _CONTEXT_RE[kind].search(folded, end, end + _AFTER):
        return round(min(1.0, base + CONTEXT_BOOST), 2)
    return base


def scan(text: str, kinds: Collection[str] | None = None) -> list[Finding]:
    """Every validated candidate with its score, overlapping and below MIN_SCORE included."""
    folded = text.translate(_FOLD)
    found = []
    for can_yield, pattern, check in _DETECTORS:
        if kinds is not None and not can_yield & set(kinds):
            continue
        for m in pattern.finditer(folded):
            verdict = check(m.group())
            if verdict and (kinds is None or verdict[0] in kinds):
                found.append(Finding(verdict[0], m.start(), m.end(),
                                     _score(verdict[0], verdict[1], folded, m.start(), m.end())))
    return found


def find(text: str, *, kinds: Collection[str] | None = None, min_score: float = MIN_SCORE) -> list[Finding]:
    """Non-overlapping PII spans in ``text`` scoring ``min_score`` or more, in order of appearance."""
    kept: list[Finding] = []
    ranked = sorted(scan(text, kinds), key=lambda f: (-f.score, KINDS.index(f.kind), f.start))
    for f in ranked:
        if f.score >= min_score and all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


class PiiVault:
    """Numbered placeholder → original value, to put values back into a reply. Never shows them:
    ``str``, ``repr`` and pickling reveal nothing, so a vault that reaches a log or a cache leaks no PII."""

    __slots__ = ("_values", "_numbers")
    _PLACEHOLDER = re.compile(r"<[^<>\s]{1,12}_[0-9]{1,4}>")

    def __init__(self) -> None:
        self._values: dict[str, str] = {}
        self._numbers: dict[tuple[str, str], str] = {}

    def keep(self, kind: str, value: str) -> str:
        """The placeholder for ``value`` (the same one each time it recurs), remembering the value."""
        if (kind, value) not in self._numbers:
            n = 1 + sum(1 for k, _ in self._numbers if k == kind)
            placeholder = f"{PLACEHOLDERS[kind][:-1]}_{n}>"
            self._numbers[kind, value] = placeholder
            self._values[placeholder] = value
        return self._numbers[kind, value]

    def restore(self, text: str) -> str:
        """``text`` with every placeholder this vault issued replaced by its value."""
        return self._PLACEHOLDER.sub(lambda m: self._values.get(m.group(), m.group()), text)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"PiiVault({len(self)} values hidden)"

    def __reduce__(self):
        raise TypeError("a PiiVault holds raw PII and cannot be pickled or copied")


def _restorable(reversible: bool | Collection[str]) -> frozenset[str]:
    if reversible is True:
        return frozenset(KINDS) - NEVER_REVERSIBLE
    wanted = frozenset(reversible or ())
    if unknown := wanted - set(KINDS):
        raise ConfigError(f"unknown PII kinds {sorted(unknown)}", hint=f"use some of {', '.join(KINDS)}")
    if barred := wanted & NEVER_REVERSIBLE:
        raise ConfigError(f"PII kinds {sorted(barred)} may never be restored",
                          hint="leave identity and payment numbers out of the reversible kinds")
    return wanted


def mask(text: str, *, reversible: bool | Collection[str] = False, kinds: Collection[str] | None = None,
         min_score: float = MIN_SCORE, vault: PiiVault | None = None) -> MaskResult:
    """``text`` with each finding replaced by its placeholder, and how many of each kind.

    ``reversible`` (True, or the kinds to keep) numbers the placeholders of those kinds
    (``<전화번호_1>``) and returns their values in ``MaskResult.vault``; identity and payment numbers
    are never kept. Pass the ``vault`` of earlier texts (the other messages of a conversation) to
    number placeholders across all of them.
    """
    restorable = _restorable(reversible)
    vault = (vault if vault is not None else PiiVault()) if reversible else None
    parts, last = [], 0
    findings = find(text, kinds=kinds, min_score=min_score)
    for f in findings:
        value = text[f.start:f.end]
        placeholder = vault.keep(f.kind, value) if vault is not None and f.kind in restorable else None
        parts += [text[last:f.start], placeholder or PLACEHOLDERS[f.kind]]
        last = f.end
    parts.append(text[last:])
    return MaskResult("".join(parts), Counter(f.kind for f in findings), vault)
