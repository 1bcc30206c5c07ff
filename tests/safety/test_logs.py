import logging

from changjak.safety.logs import MaskPii, install

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
