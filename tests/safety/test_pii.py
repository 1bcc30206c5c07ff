"""Korean PII masking: every kind in several spellings, validators, labels, no false positives."""

from __future__ import annotations

import copy
import dataclasses
import logging
import pickle
import random
import statistics
import time

import pytest

from changjak.errors import ConfigError
from changjak.safety import pii

VALID_RRN = "900101-1234568"  # checksum: 124 % 11 = 3 -> (11 - 3) % 10 = 8
BAD_CHECKSUM_RRN = "900101-1234567"  # re-issued numbers since October 2020 look like this
SAMSUNG_BRN = "124-81-00998"  # public company numbers; the NTS check digit holds
NAVER_BRN = "220-81-62517"


@pytest.mark.parametrize("text", [
    f"제 주민번호는 {VALID_RRN}입니다", "주민등록번호 9001011234568 확인", "900101 1234568", "900101 - 1234568",
    "850315-2345678", "210505-3987654", "900101–1234568", "９００１０１－１２３４５６８",
    BAD_CHECKSUM_RRN, BAD_CHECKSUM_RRN.replace("-", ""),  # random serials since October 2020
])
def test_rrn_spellings_are_masked(text: str) -> None:
    result = pii.mask(text)
    assert result.counts == {"rrn": 1}
    assert "<주민등록번호>" in result.text
    assert not any(c.isdigit() for c in result.text)


def test_our_rrn_checksum_agrees_with_stdnum() -> None:
    rrn = pytest.importorskip("stdnum.kr.rrn")
    rng = random.Random(3)
    for _ in range(2000):
        number = f"{rng.randint(40, 99)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.choice('12')}"
        number += f"{rng.randrange(97):02d}{rng.randrange(10 ** 4):04d}"
        [finding] = pii.scan(number, kinds={"rrn"})
        assert (finding.score == 0.9) == rrn.is_valid(number), number


@pytest.mark.parametrize("text", [
    "901301-1234568",  # month 13
    "900230-1234568",  # 30 February
    "900101-9234568",  # 9 is not a sex/century digit we accept
    "300101-3234568",  # born in 2030
    "주문번호 9001011234568",  # a valid-looking RRN labelled as an order number
])
def test_rrn_look_alikes_are_kept(text: str) -> None:
    assert pii.mask(text).text == text


@pytest.mark.parametrize("text", ["외국인등록번호 900101-5234563", "850315-6234567", "010203 7123456"])
def test_foreigner_numbers_are_their_own_kind(text: str) -> None:
    assert pii.mask(text).counts == {"frn": 1}
    assert "<외국인등록번호>" in pii.mask(text).text


@pytest.mark.parametrize("text", [
    "010-1234-5678", "01012345678", "010 1234 5678", "010.1234.5678", "011-123-4567", "010 - 1234 - 5678",
    "010ㅡ1234ㅡ5678", "010–1234–5678", "０１０－１２３４－５６７８", "(010) 1234-5678", "010)1234-5678",
    "+82 10-1234-5678", "+821012345678", "+82-10-1234-5678", "+82 (0)10 1234 5678", "+82 010-1234-5678",
    "(+82)10-1234-5678", "02-123-4567", "02-1234-5678", "031-123-4567", "(02) 1234-5678", "070-1234-5678",
    "+82 2-123-4567", "0505-123-4567", "0212345678",
])
def test_phone_spellings_are_masked(text: str) -> None:
    result = pii.mask(f"연락처는 {text}로 주세요")
    assert result.text == "연락처는 <전화번호>로 주세요"
    assert result.counts == {"phone": 1}


@pytest.mark.parametrize("email", ["hong.gildong@example.com", "a+tag@mail.co.kr", "user_01@naver.com",
                                   "KIM@NAVER.COM", "hong＠naver.com"])
def test_email_is_masked_even_when_korean_follows(email: str) -> None:
    assert pii.mask(f"메일 {email}입니다").text == "메일 <이메일>입니다"


@pytest.mark.parametrize("card", ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111",
                                  "5500 0000 0000 0004", "3782 822463 10005", "２２２２ ４０００ ７０００ ０００５"])
def test_luhn_valid_card_numbers_are_masked(card: str) -> None:
    result = pii.mask(f"카드 {card} 결제")
    assert result.text == "카드 <카드번호> 결제"
    assert result.counts == {"card": 1}


@pytest.mark.parametrize("card", ["4111 1111 1111 1112", "1234-5678-9012-3456", "주문번호 4111-1111-1111-1111"])
def test_card_look_alikes_are_kept(card: str) -> None:
    assert pii.mask(card).text == card


@pytest.mark.parametrize(("text", "masked"), [
    ("국민은행 123456-12-123456 예금주 홍길동", "국민은행 <계좌번호> 예금주 홍길동"),
    ("110-123-456789 (신한)로 보내주세요", "<계좌번호> (신한)로 보내주세요"),
    ("카카오뱅크 3333-01-1234567", "카카오뱅크 <계좌번호>"),
    ("농협 302-1234-5678-91", "농협 <계좌번호>"),
    ("계좌번호 110123456789로 송금했어요", "계좌번호 <계좌번호>로 송금했어요"),
    ("토스뱅크 1000 1234 5678으로 입금", "토스뱅크 <계좌번호>으로 입금"),
    ("하나 123-456789-12345", "하나 <계좌번호>"),
])
def test_bank_accounts_are_masked(text: str, masked: str) -> None:
    assert pii.mask(text).text == masked


def test_a_bare_digit_run_is_an_account_only_with_a_bank_word_nearby() -> None:
    assert pii.find("110123456789") == []
    assert pii.find("운송장번호 1234-5678-9012") == []
    [finding] = pii.find("환불 계좌 110123456789")
    assert finding.kind == "account"


@pytest.mark.parametrize(("text", "kind"), [
    ("여권번호 M12345678", "passport"), ("여권 M123A4567 만료", "passport"), ("M123A4567 맞나요?", "passport"),
    ("여권 m12345678", "passport"), ("운전면허번호 11-12-345678-90", "driver_license"),
    ("서울 12-345678-90", "driver_license"), ("경기북부 21-123456-78", "driver_license"),
    ("면허 111234567890", "driver_license"), (f"사업자등록번호 {SAMSUNG_BRN}", "brn"), (NAVER_BRN, "brn"),
    ("사업자 2208162517", "brn"), ("서버 IP는 192.168.0.10입니다", "ip"), ("fe80::1ff:fe23:4567:890a 접속", "ip"),
    ("로그에 ::ffff:192.0.2.128", "ip"), ("2001:db8::8a2e:370:7334", "ip"),
])
def test_identity_business_and_network_numbers_are_masked(text: str, kind: str) -> None:
    result = pii.mask(text)
    assert result.counts == {kind: 1}
    assert pii.PLACEHOLDERS[kind] in result.text


@pytest.mark.parametrize("text", [
    "M12345678", "모델 M123A4567", "99-12-345678-90", "124-81-00999", "2208162517", "256.1.1.1", "버전 1.2.3.4",
    "2.1.0.3으로 업데이트했어요", "12:30:45", "서버 IP는 127.0.0.1:8000", "0.0.0.0에 바인딩", "IPv6 루프백 ::1 주소",
])
def test_identity_look_alikes_are_kept(text: str) -> None:
    assert pii.find(text) == []


@pytest.mark.parametrize("text", [
    "2024-01-15에 개봉했다", "1999년부터 2023년까지", "가격은 1,250,000원", "35000원이요", "20240115", "3.14159",
    "버전 1.2.3", "12:30에 만나요", "1588-1234", "2019-2024 시즌", "제 키는 180cm", "ISBN 978-89-12345-67-8",
    "2024.01.15 14:30:00", "주문번호 20240115-0001234", "주문번호 2024011512345678", "송장번호 612345678901",
    "삼성전자(005930)", "좌표 37.5665, 126.9780", "바코드 8801234567890", "입금액 1500000원", "v2.10.4.1",
])
def test_ordinary_numbers_are_not_pii(text: str) -> None:
    assert pii.find(text) == []
    assert pii.mask(text) == pii.MaskResult(text, {})


def test_mixed_text_is_masked_in_place_and_counted() -> None:
    text = (f"이름: 홍길동, 전화 010-9876-5432, 메일 gd@example.com, 주민 {VALID_RRN}, 카드 4111111111111111, "
            f"집 02-555-1234, 국민은행 123456-12-123456, 여권 M123A4567")
    result = pii.mask(text)
    assert result.text == ("이름: 홍길동, 전화 <전화번호>, 메일 <이메일>, 주민 <주민등록번호>, 카드 <카드번호>, "
                           "집 <전화번호>, 국민은행 <계좌번호>, 여권 <여권번호>")
    assert result.counts == {"phone": 2, "email": 1, "rrn": 1, "card": 1, "account": 1, "passport": 1}


def test_spans_point_into_the_original_text_whatever_the_spelling() -> None:
    text = "번호는 ０１０－１２３４－５６７８ㅡ 끝"
    [finding] = pii.find(text)
    assert text[finding.start:finding.end] == "０１０－１２３４－５６７８"


def test_find_reports_kind_span_and_score_never_the_value() -> None:
    text = "전화 010-1234-5678 끝"
    [finding] = pii.find(text)
    assert (finding.kind, text[finding.start:finding.end]) == ("phone", "010-1234-5678")
    assert [f.name for f in dataclasses.fields(pii.Finding)] == ["kind", "start", "end", "score"]
    assert "1234" not in repr(finding)


def test_context_words_raise_and_other_labels_lower_the_score() -> None:
    def score(text: str) -> float:
        [finding] = [f for f in pii.scan(text) if f.kind == "passport"]
        return finding.score

    assert score("M12345678") < pii.MIN_SCORE <= score("여권 M12345678") == score("M12345678 여권 번호")
    assert score("여권 M12345678") - score("M12345678") == pytest.approx(pii.CONTEXT_BOOST)
    assert score("예약번호 M123A4567") < pii.MIN_SCORE <= score("M123A4567")
    assert score("주문번호 확인했고 여권 M12345678") >= pii.MIN_SCORE  # the nearest label decides


def test_a_number_valid_as_rrn_and_card_counts_once_as_rrn() -> None:
    digits = "9001011100061"  # passes both the RRN checksum and the Luhn check
    assert [(f.kind, f.start, f.end) for f in pii.find(digits)] == [("rrn", 0, len(digits))]
    assert [(f.kind, f.start, f.end) for f in pii.find("카드 " + digits)] == [("rrn", 3, 3 + len(digits))]


def test_kinds_and_min_score_narrow_the_search() -> None:
    text = "010-1234-5678, a@b.co"
    assert [f.kind for f in pii.find(text, kinds={"email"})] == ["email"]
    assert pii.find("계좌 110123456789", min_score=0.9) == []


def test_reversible_masking_numbers_placeholders_and_restores_allowed_kinds() -> None:
    text = f"010-1111-2222로 전화, 다시 010-1111-2222, 또는 010-3333-4444, 메일 a@b.com, 주민 {VALID_RRN}"
    result = pii.mask(text, reversible={"phone", "email"})
    assert result.text == ("<전화번호_1>로 전화, 다시 <전화번호_1>, 또는 <전화번호_2>, 메일 <이메일_1>, "
                           "주민 <주민등록번호>")
    assert len(result.vault) == 3
    reply = "확인했습니다: <전화번호_2>, <이메일_1>, <주민등록번호>, <전화번호_9>"
    assert result.vault.restore(reply) == "확인했습니다: 010-3333-4444, a@b.com, <주민등록번호>, <전화번호_9>"
    everything = pii.mask(text, reversible=True)
    assert everything.vault.restore(everything.text) == text.replace(VALID_RRN, "<주민등록번호>")


def test_the_vault_never_shows_its_values() -> None:
    vault = pii.mask("연락처 010-1111-2222", reversible=True).vault
    for shown in (str(vault), repr(vault), repr(pii.mask("010-1111-2222", reversible=True))):
        assert "1111" not in shown
    for leak in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match="cannot be pickled"):
            leak(vault)


@pytest.mark.parametrize(("reversible", "message"), [({"rrn"}, "may never be restored"),
                                                     ({"card", "phone"}, "may never be restored"),
                                                     ({"telephone"}, "unknown PII kinds")])
def test_policy_refuses_to_keep_identity_and_payment_numbers(reversible: set[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        pii.mask("010-1111-2222", reversible=reversible)
    assert info.value.hint


def test_masking_writes_no_log_line_with_pii(caplog: pytest.LogCaptureFixture) -> None:
    text = f"전화 010-1111-2222, 주민 {VALID_RRN}, 카드 4111 1111 1111 1111"
    with caplog.at_level(logging.DEBUG):
        result = pii.mask(text, reversible={"phone"})
        logging.getLogger("changjak").info("masked %s %s", result, pii.find(text))
    assert caplog.records
    assert not any(secret in caplog.text for secret in ("1111-2222", VALID_RRN, "4111"))


def test_a_500_character_prompt_masks_well_inside_the_request_budget() -> None:
    text = ("연락처 010-1234-5678, 메일 kim@example.com, 2024년 1월 15일 주문번호 20240115-0001234, "
            "가격 1,250,000원, 서버 192.168.0.1, 계좌 국민 123456-12-123456. " * 6)[:500]
    timings = []
    for _ in range(50):
        start = time.perf_counter()
        pii.mask(text)
        timings.append(time.perf_counter() - start)
    assert statistics.median(timings) < 0.010  # all request-side checks share 10 ms at p95


@pytest.mark.parametrize(("text", "kind"), [("tel010-2345-6789", "phone"), ("k010-2345-6789", "phone"),
                                            ("id900101-1234568", "rrn"), ("x4111-1111-1111-1111", "card")])
def test_distinctive_identifiers_glued_to_latin_letters_are_still_found(text, kind):
    assert pii.mask(text).counts[kind] == 1
