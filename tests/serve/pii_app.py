"""A real server for the no-PII end-to-end test: ``uvicorn tests.serve.pii_app:create --factory``.

Logging is set up as ``changjak serve`` sets it up (JSON lines on stderr, PII masked on the
handler), at DEBUG so every library's chatter is in the output the test reads; the model is the
fake backend, which repeats what it was given, so whatever reached the model comes back too.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI

from changjak.backends.inference.fake import FakeBackend
from changjak.serve import logging as serve_logging
from changjak.serve.app import create_app
from changjak.settings import Settings


def create() -> FastAPI:
    settings = Settings.load()
    serve_logging.configure(settings.serve.log_format, level=logging.DEBUG)
    return create_app(settings, FakeBackend("changjak-writer"), model_version="7")
