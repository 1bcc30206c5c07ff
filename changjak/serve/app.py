"""The FastAPI app behind ``changjak serve``: the OpenAI-compatible API over one served model.

``create_app(settings)`` loads the model in its lifespan: it resolves ``settings.serve.model_uri``
(``models:/changjak-writer@champion`` by default) in the MLflow registry, fetches and verifies the
base model that version was trained on, and loads base + adapter with the backend named by
``settings.serve.backend``. Tests and ``main`` pass a backend instead, and close it themselves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from changjak import __version__
from changjak.backends import inference
from changjak.backends.inference import InferenceBackend
from changjak.safety.policy import SafetyEngine
from changjak.serve import errors
from changjak.serve.auth import KeyRing
from changjak.serve.deps import ServedModel
from changjak.serve.keys import KeyStore
from changjak.serve.routes import admin, chat, health, models
from changjak.settings import Settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings, backend: InferenceBackend | None = None, *,
               model_version: str | None = None) -> FastAPI:
    """The API app; without ``backend`` its lifespan loads the registered model and closes it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if backend is None:
            served = await asyncio.to_thread(load_model, settings)
        else:
            served = ServedModel(backend, model_version, int(time.time()))
        app.state.served = served
        app.state.key_store = await asyncio.to_thread(KeyStore.from_settings, settings)
        try:
            yield
        finally:
            app.state.served = None
            app.state.key_store.close()
            if backend is None:
                await served.backend.aclose()

    app = FastAPI(title="changjak", version=__version__, lifespan=lifespan,
                  summary="OpenAI-compatible API of the changjak Korean creative-writing model")
    app.state.settings = settings
    app.state.keys = KeyRing(settings.api_keys)  # hashed once, here
    app.state.safety = SafetyEngine.from_settings(settings)
    app.state.served = None
    errors.install(app)
    for router in (health.router, models.router, chat.router, admin.router):
        app.include_router(router)
    return app


def load_model(settings: Settings) -> ServedModel:
    """Resolve ``settings.serve.model_uri`` and load that version with ``settings.serve.backend``."""
    from changjak import base_model, registry

    resolved = registry.resolve(settings, settings.serve.model_uri)
    base = base_model.resolve(settings, source=resolved.base_source, expected_sha256=resolved.base_sha256)
    logger.info("loading %s (version %s, run %s) on %s with the %s backend", settings.serve.model_uri,
                resolved.version, resolved.run_id, base.path, settings.serve.backend)
    backend = inference.create(settings.serve.backend, base_path=base.path, adapter_dir=resolved.adapter_dir,
                               device=settings.serve.device, dtype="auto", model_id=resolved.name)
    return ServedModel(backend, str(resolved.version), int(time.time()))
