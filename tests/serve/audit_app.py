"""An app for tests that run a real server: ``uvicorn tests.serve.audit_app:create --factory``.

Settings come from the environment (``CHANGJAK_HOME``, ``CHANGJAK_API_KEYS``, ...); the model is
the fake backend, so the server starts in a second and answers at once.
"""

from __future__ import annotations

from fastapi import FastAPI

from changjak.backends.inference.fake import FakeBackend
from changjak.serve.app import create_app
from changjak.settings import Settings


def create() -> FastAPI:
    return create_app(Settings.load(), FakeBackend("changjak-writer"))
