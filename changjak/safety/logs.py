"""PII never reaches a log line: a logging filter that masks every record on its way out.

    install()   # on the handlers of the root logger and uvicorn's, once they are configured

The filter sits on handlers, not loggers, so it sees records propagated from every module. It
masks the formatted message (arguments included) and any exception text with
:func:`changjak.safety.pii.mask`, so ``logger.info("user said %s", text)`` is safe whatever
``text`` holds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from changjak.safety import pii

LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")


class MaskPii(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = pii.mask(message).text
        if masked != message:
            record.msg, record.args = masked, None
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
