"""PII never reaches a log line: a logging filter that masks every record on its way out.

    install()   # on the handlers of the root logger and uvicorn's, once they are configured

The filter sits on handlers, not loggers, so it sees records propagated from every module. It
masks the formatted message (arguments included) and any exception text with
:func:`changjak.safety.pii.mask`, so ``logger.info("user said %s", text)`` is safe whatever
``text`` holds.

Most lines hold nothing the masker could find, and it is the dearest part of a log line, so two
shortcuts skip it without missing anything it would mask: a message with none of the characters
every one of its shapes needs (:func:`may_hold_pii`) is passed as it is, and a short message the
masker found clean is remembered as clean (the access line, ``POST /v1/chat/completions 200``,
comes again with every request). Only clean messages are remembered, so no PII stays in memory.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from changjak.safety import pii

LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")
# Every shape pii.mask finds holds an ASCII digit or an "@" (emails), but an IPv6 address such as
# dead::beef, whose pattern starts with two colons and only hex digits between them; the masker first
# folds full-width characters (U+FF01-FF5E) to ASCII, so their full-width forms count too.
_NEEDED = re.compile("[0-9@\uff10-\uff19\uff20]|[:\uff1a][A-Fa-f\uff21-\uff26\uff41-\uff46]*[:\uff1a]")
_CLEAN_MAX_CHARS = 512  # longer messages are checked every time
_CLEAN_MAX_ENTRIES = 4096


def may_hold_pii(text: str) -> bool:
    """False only when ``pii.mask`` cannot find anything in ``text`` (no character its shapes need)."""
    return _NEEDED.search(text) is not None


class MaskPii(logging.Filter):
    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self._clean: set[str] = set()  # short messages the masker found nothing in

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message not in self._clean and may_hold_pii(message):
            masked = pii.mask(message).text
            if masked != message:
                record.msg, record.args = masked, None
            elif len(message) <= _CLEAN_MAX_CHARS:
                if len(self._clean) >= _CLEAN_MAX_ENTRIES:
                    self._clean.clear()
                self._clean.add(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = pii.mask(record.exc_text).text
        return True


def install(loggers: Iterable[str] = LOGGERS) -> MaskPii:
    """Put one MaskPii on every handler of ``loggers`` that lacks one; returns it."""
    mask = MaskPii()
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, MaskPii) for f in handler.filters):
                handler.addFilter(mask)
    return mask
