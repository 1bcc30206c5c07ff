"""Korean PII detection and masking: each kind in several spellings, validators, no false positives."""

from __future__ import annotations

import dataclasses

import pytest

from changjak.safety import pii

VALID_RRN = "900101-1234568"  # checksum: 124 % 11 = 3 -> (11 - 3) % 10 = 8
VALID_RRN_2 = "850315-2345678"
BAD_CHECKSUM_RRN = "900101-1234567"  # re-issued numbers since October 2020 look like this


@pytest.mark.parametrize("text", [
    f"제 주민번호는 {VALID_RRN}입니다",
    "주민등록번호 9001011234568 확인",
    "900101 1234568",
    "900101 - 1234568",
    VALID_RRN_2,
    "210505-3987654",  # born 2021: random serial digits, no checksum to check
])
def test_rrn_spellings_are_masked(text: str) -> None:
    result = pii.mask(text)
    assert result.counts == {"rrn": 1}
    assert "<주민등록번호>" in result.text
    assert not any(c.isdigit() for c in result.text)


def test_hyphenated_rrn_without_checksum_is_still_masked() -> None:
    assert pii.mask(f"주민번호 {BAD_CHECKSUM_RRN} 입니다").text == "주민번호 <주민등록번호> 입니다"


@pytest.mark.parametrize("text", [
    BAD_CHECKSUM_RRN.replace("-", ""),  # bare digits before October 2020: the checksum must hold
    "901301-1234568",  # month 13
    "900230-1234568",  # 30 February
    "900101-9234568",  # 9 is not a sex/century digit we accept
])
def test_rrn_look_alikes_are_kept(text: str) -> None:
    assert pii.mask(text).text == text


@pytest.mark.parametrize("text", [
    "010-1234-5678", "01012345678", "010 1234 5678", "010.1234.5678", "011-123-4567",
    "+82 10-1234-5678", "+821012345678", "+82-10-1234-5678",
    "02-123-4567", "02-1234-5678", "031-123-4567", "(02) 1234-5678", "070-1234-5678", "+82 2-123-4567",
])
def test_phone_spellings_are_masked(text: str) -> None:
    result = pii.mask(f"연락처는 {text}로 주세요")
    assert result.text == "연락처는 <전화번호>로 주세요"
    assert result.counts == {"phone": 1}


@pytest.mark.parametrize("email", ["hong.gildong@example.com", "a+tag@mail.co.kr", "user_01@naver.com"])
def test_email_is_masked_even_when_korean_follows(email: str) -> None:
    assert pii.mask(f"메일 {email}입니다").text == "메일 <이메일>입니다"


@pytest.mark.parametrize("card", ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111",
                                  "5500 0000 0000 0004", "3782 822463 10005"])
def test_luhn_valid_card_numbers_are_masked(card: str) -> None:
    result = pii.mask(f"카드 {card} 결제")
    assert result.text == "카드 <카드번호> 결제"
    assert result.counts == {"card": 1}


@pytest.mark.parametrize("card", ["4111 1111 1111 1112", "1234-5678-9012-3456"])
def test_luhn_invalid_card_numbers_are_kept(card: str) -> None:
    assert pii.mask(card).text == card


@pytest.mark.parametrize("text", [
    "2024-01-15에 개봉했다", "1999년부터 2023년까지", "가격은 1,250,000원", "35000원이요", "20240115",
    "3.14159", "버전 1.2.3", "12:30에 만나요", "1588-1234", "2019-2024 시즌", "제 키는 180cm", "ISBN 978-89-12345-67-8",
])
def test_ordinary_numbers_are_not_pii(text: str) -> None:
    assert pii.find(text) == []
    assert pii.mask(text) == pii.MaskResult(text, {})


def test_mixed_text_is_masked_in_place_and_counted() -> None:
    text = f"이름: 홍길동, 전화 010-9876-5432, 메일 gd@example.com, 주민 {VALID_RRN}, 카드 4111111111111111, 집 02-555-1234"
    result = pii.mask(text)
    assert result.text == ("이름: 홍길동, 전화 <전화번호>, 메일 <이메일>, 주민 <주민등록번호>, "
                           "카드 <카드번호>, 집 <전화번호>")
    assert result.counts == {"phone": 2, "email": 1, "rrn": 1, "card": 1}


def test_find_reports_spans_without_the_value() -> None:
    text = "전화 010-1234-5678 끝"
    [finding] = pii.find(text)
    assert (finding.kind, text[finding.start:finding.end]) == ("phone", "010-1234-5678")
    assert [f.name for f in dataclasses.fields(pii.Finding)] == ["kind", "start", "end"]


def test_a_number_valid_as_rrn_and_card_counts_once_as_rrn() -> None:
    digits = "9001011100061"  # passes both the RRN checksum and the Luhn check
    assert pii.find(digits) == [pii.Finding("rrn", 0, len(digits))]
    assert pii.find("카드 " + digits) == [pii.Finding("rrn", 3, 3 + len(digits))]
