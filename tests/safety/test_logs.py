import logging
import random

import pytest

from changjak.safety import pii
from changjak.safety.logs import MaskPii, install, may_hold_pii

PHONE = "010-2345-6789"


def test_records_from_any_module_are_masked_on_the_handler(caplog):
    caplog.handler.addFilter(MaskPii())
    logging.getLogger("changjak.some.module").warning("user %s wrote from %s", "민지", PHONE)
    try:
        raise ValueError(f"bad value {PHONE}")
    except ValueError:
        logging.getLogger("elsewhere").exception("failed on minji@example.com")
    assert PHONE not in caplog.text and "minji@example.com" not in caplog.text
    assert "user 민지 wrote from <전화번호>" in caplog.text and "bad value <전화번호>" in caplog.text


def test_install_adds_one_filter_per_handler():
    logger = logging.getLogger("changjak-test-install")
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    try:
        install([logger.name])
        install([logger.name])
        assert sum(isinstance(f, MaskPii) for f in handler.filters) == 1
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize("text", [
    "연락처 010-2345-6789", "０１０－２３４５－６７８９", "mail minji@example.com", "minji＠example.com",
    "주민번호 900101-1234568", "card 4111 1111 1111 1111", "접속 203.0.113.7", "ip dead::beef", "ip ＤＥＡＤ：：ＢＥＥＦ",
    "ip a:b:c:d:e:f:a:b",
])
def test_every_shape_the_masker_finds_passes_the_precheck_and_is_masked(text, caplog):
    assert pii.mask(text).counts, text  # the masker finds it ...
    assert may_hold_pii(text)  # ... so the precheck must not skip it
    caplog.handler.addFilter(MaskPii())
    logging.getLogger("changjak.test").warning("said %s", text)
    assert caplog.records[-1].getMessage() == "said " + pii.mask(text).text


def test_the_precheck_skips_only_texts_the_masker_finds_nothing_in():
    # Everything but the characters the precheck looks for: letters (full-width too), Hangul, punctuation,
    # dashes, spaces and lone colons, in random mixes.
    pool = ("abcdefxyzABCDEFXYZ민지서울전화번호주민계좌 .-_:+()/#%ｅｍａｉｌＡＢ－　·–" + "ab:cd:ef:")
    rng = random.Random(7)
    skipped = 0
    for _ in range(3000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 60)))
        if not may_hold_pii(text):
            skipped += 1
            assert pii.mask(text).text == text, text
    assert skipped > 1000


def test_a_clean_message_is_remembered_and_one_with_pii_is_masked_every_time(caplog):
    caplog.set_level(logging.INFO)
    mask = MaskPii()
    caplog.handler.addFilter(mask)
    log = logging.getLogger("changjak.test")
    for _ in range(3):
        log.info("%s %s %d", "POST", "/v1/chat/completions", 200)
        log.info("user wrote %s", PHONE)
    assert mask._clean == {"POST /v1/chat/completions 200"}
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["POST /v1/chat/completions 200", "user wrote <전화번호>"] * 3
