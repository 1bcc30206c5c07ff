"""Presidio integration: an offline Korean AnalyzerEngine that finds what pii.find finds, masked alike."""

from __future__ import annotations

import logging
import random

import pytest

pytest.importorskip("presidio_analyzer")
pytest.importorskip("presidio_anonymizer")

from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer  # noqa: E402
from presidio_analyzer.nlp_engine import NoOpNlpEngine  # noqa: E402
from presidio_analyzer.predefined_recognizers import KrBrnRecognizer  # noqa: E402

from changjak.errors import ConfigError  # noqa: E402
from changjak.safety import pii, recognizers  # noqa: E402

TEXTS = [
    "연락처는 010-1234-5678, 메일 kim@example.com, 주민번호 900101-1234568 입니다.",
    "국민은행 123456-12-123456 예금주 홍길동, 카드 4111 1111 1111 1111로 결제",
    "여권 M123A4567, 운전면허 서울 12-345678-90, 사업자등록번호 124-81-00998",
    "서버 IP 192.168.0.10 과 fe80::1ff:fe23:4567:890a, 외국인등록번호 850315-6234567",
    "2024-01-15 주문번호 20240115-0001234, 가격 1,250,000원, 버전 1.2.3.4",
    "+82 (0)10 1234 5678 또는 ０２－１２３４－５６７８로 전화 주세요",
]


@pytest.fixture(scope="module")
def engine() -> AnalyzerEngine:
    return recognizers.analyzer()


def test_the_engine_runs_offline_for_korean_with_every_kind(engine: AnalyzerEngine) -> None:
    assert isinstance(engine.nlp_engine, NoOpNlpEngine)
    assert engine.supported_languages == ["ko"]
    assert set(engine.get_supported_entities("ko")) == set(recognizers.ENTITIES.values())
    assert set(recognizers.ENTITIES) == set(pii.KINDS)


@pytest.mark.parametrize("text", TEXTS)
def test_presidio_finds_the_spans_the_fast_path_finds(engine: AnalyzerEngine, text: str) -> None:
    found = {(recognizers.KINDS[r.entity_type], r.start, r.end) for r in engine.analyze(text, language="ko")}
    assert {(f.kind, f.start, f.end) for f in pii.find(text)} <= found


@pytest.mark.parametrize("text", TEXTS)
def test_presidio_masks_like_the_fast_path(engine: AnalyzerEngine, text: str) -> None:
    assert recognizers.mask(text, engine) == pii.mask(text)


def test_context_passed_to_analyze_raises_scores_the_presidio_way(engine: AnalyzerEngine) -> None:
    assert engine.analyze("110123456789", language="ko") == []
    [result] = engine.analyze("110123456789", language="ko", context=["계좌"])
    assert (result.entity_type, result.start, result.end) == ("KR_BANK_ACCOUNT", 0, 12)
    assert result.score >= pii.MIN_SCORE


def test_a_smaller_engine_and_its_threshold() -> None:
    only_email = recognizers.analyzer(kinds=["email"])
    assert only_email.get_supported_entities("ko") == ["EMAIL_ADDRESS"]
    assert [r.entity_type for r in only_email.analyze(TEXTS[0], language="ko")] == ["EMAIL_ADDRESS"]
    everything = recognizers.analyzer(min_score=0.0).analyze("M12345678", language="ko")
    assert [(r.entity_type, r.score) for r in everything] == [("KR_PASSPORT", 0.35)]


def test_teams_can_add_their_own_recognizers_to_the_registry() -> None:
    registry = recognizers.registry()
    plate = Pattern("plate", r"\d{2,3}[가-힣] ?\d{4}", 0.6)
    registry.add_recognizer(PatternRecognizer("KR_CAR_PLATE", patterns=[plate], supported_language="ko"))
    engine = AnalyzerEngine(registry=registry, supported_languages=["ko"],
                            nlp_engine=NoOpNlpEngine([{"lang_code": "ko", "model_name": "noop"}]))
    text = "차량 12가 3456, 전화 010-1234-5678"
    masked = recognizers.anonymize(text, engine.analyze(text, language="ko"))
    assert masked.text == "차량 <KR_CAR_PLATE>, 전화 <전화번호>"
    assert masked.counts == {"KR_CAR_PLATE": 1, "phone": 1}


def test_unknown_kinds_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown PII kind") as info:
        recognizers.KoreanPiiRecognizer("telephone")
    assert info.value.hint


def test_our_business_number_check_agrees_with_presidio_and_stdnum() -> None:
    brn = pytest.importorskip("stdnum.kr.brn")
    stock = KrBrnRecognizer()
    rng = random.Random(7)
    for _ in range(3000):
        digits = f"{rng.randrange(10 ** 10):010d}"
        ours = bool(pii.find(f"{digits[:3]}-{digits[3:5]}-{digits[5:]}", kinds={"brn"}))
        assert ours == (stock.validate_result(digits) and brn.is_valid(digits)), digits


def test_presidio_path_writes_no_log_line_with_pii(engine: AnalyzerEngine,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        for text in TEXTS:
            recognizers.anonymize(text, engine.analyze(text, language="ko", context=["계좌"]))
    assert caplog.records
    secrets = ("1234-5678", "kim@example.com", "900101", "123456-12", "4111", "M123A4567", "192.168.0.10")
    assert not [secret for secret in secrets if secret in caplog.text]
