"""The FastAPI app behind ``changjak serve``: the OpenAI-compatible API over one served model.

``create_app(settings)`` loads the model in its lifespan: it resolves ``settings.serve.model_uri``
(``models:/changjak-writer@champion`` by default) in the MLflow registry, fetches and verifies the
base model that version was trained on, and loads base + adapter with the backend named by
``settings.serve.backend``. Tests and ``main`` pass a backend instead, and close it themselves.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from changjak import __version__, db
from changjak.audit.middleware import AuditMiddleware, AuditWriter
from changjak.backends import inference
from changjak.backends.inference import InferenceBackend
from changjak.monitor.backend import MeteredBackend
from changjak.monitor.metrics import Metrics, mark_process_dead
from changjak.monitor.middleware import ObservabilityMiddleware
from changjak.safety.policy import SafetyEngine
from changjak.serve import errors, follow, openapi
from changjak.serve.auth import KeyRing, all_routes
from changjak.serve.cache import ResponseCache
from changjak.serve.context import ContextMiddleware
from changjak.serve.deps import ServedModel
from changjak.serve.fastpath import ChatFastPath
from changjak.serve.hygiene import BodyLimitMiddleware
from changjak.serve.keys import KeyStore
from changjak.serve.lifecycle import DrainMiddleware, Lifecycle, hook_signals
from changjak.serve.limits import Limiter
from changjak.serve.routes import admin, audit, chat, feedback, health, models, rag
from changjak.serve.routes import metrics as metrics_route
from changjak.settings import Settings

# changjak meters and logs itself (changjak.monitor); FastAPI >= 0.165's own OpenTelemetry hooks would
# ask the global OTel providers on every request (~20 µs of CPU) to find them unconfigured.
_NO_OTEL = ({"telemetry": {"tracing": False, "metrics": False, "logs": False}}
            if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {})

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
        metered = MeteredBackend(served.backend, app.state.metrics, model_version=served.version)
        served = ServedModel(metered, served.version, served.loaded_at)  # TTFT, tokens: no route changes
        app.state.served = served
        unhook_signals = hook_signals(app.state.lifecycle)  # SIGTERM drains (under uvicorn only)
        app.state.key_store = await asyncio.to_thread(KeyStore.from_settings, settings)
        redis_client = _redis(settings)  # shared by the limiter and the response cache
        app.state.limiter = Limiter.from_settings(settings, redis_client)
        app.state.cache = ResponseCache.from_settings(settings, redis_client)
        app.state.db = await asyncio.to_thread(db.connect, settings)  # the app database: audit, feedback
        app.state.audit = await AuditWriter.open(app.state.db, app.state.safety, settings.audit)
        # what is otherwise built in the first request (~0.4 s here), built before the server is ready:
        await asyncio.to_thread(app.state.safety.warm_up)  # the checks' regexes and recognisers
        all_routes(app)  # FastAPI includes routers' routes lazily, on the first walk of them
        with anyio.CancelScope():  # anyio imports its asyncio backend on first use (~30 ms)
            pass
        try:
            async with follow.following(app):  # alias moves reach this replica without a restart
                yield
        finally:
            unhook_signals()
            mark_process_dead()  # a --workers process: drop its live gauges
            app.state.served = None
            if app.state.audit is not None:
                await app.state.audit.aclose()  # commits what is still waiting
            app.state.db.dispose()
            app.state.key_store.close()
            await app.state.cache.aclose()
            if redis_client is not None:
                await redis_client.aclose()
            if getattr(app.state, "rag", None) is not None:  # built on first use by /v1/rag
                app.state.rag.close()
                app.state.rag = None
            if backend is None:
                await served.backend.aclose()

    app = FastAPI(title="changjak", version=__version__, lifespan=lifespan, **_NO_OTEL,
                  summary="OpenAI-compatible API of the changjak Korean creative-writing model")
    app.state.settings = settings
    app.state.keys = KeyRing(settings.api_keys)  # hashed once, here
    app.state.safety = SafetyEngine.from_settings(settings)
    app.state.served = None
    app.state.metrics = Metrics(settings)  # its own registry: tests build many apps
    app.state.lifecycle = Lifecycle()
    errors.install(app)
    app.add_middleware(ChatFastPath)  # innermost: POST /v1/chat/completions without FastAPI's generic dispatch
    app.add_middleware(DrainMiddleware, lifecycle=app.state.lifecycle)  # draining: 503, audited and metered
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_body_bytes)
    app.add_middleware(AuditMiddleware, skip=settings.audit.skip_routes)
    app.add_middleware(ObservabilityMiddleware, metrics=app.state.metrics)  # metrics, access log line
    app.add_middleware(ContextMiddleware)  # keep it the last added: outermost, every layer sees the context
    for router in (health.router, models.router, chat.router, admin.router, rag.router, audit.router, feedback.router,
                   metrics_route.router):
        app.include_router(router)
    openapi.install(app)  # errors documented as answered: OpenAI shape, no 422s
    return app


def _redis(settings: Settings):
    """The asyncio Redis client for ``settings.redis_url``, or None (limits and cache in-process)."""
    if not settings.redis_url:
        return None
    from changjak.backends.cache.redis import connect

    return connect(settings.redis_url)


def load_model(settings: Settings) -> ServedModel:
    """Resolve ``settings.serve.model_uri`` and load that version with ``settings.serve.backend``."""
    from changjak import base_model, registry

    if settings.serve.backend == "openai":  # the upstream server holds the model: nothing to resolve
        return ServedModel(_upstream(settings), None, int(time.time()))
    resolved = registry.resolve(settings, settings.serve.model_uri)
    base = base_model.resolve(settings, source=resolved.base_source, expected_sha256=resolved.base_sha256)
    logger.info("loading %s (version %s, run %s) on %s with the %s backend", settings.serve.model_uri,
                resolved.version, resolved.run_id, base.path, settings.serve.backend)
    serve = settings.serve
    options = {  # each backend's own section, so a --config file reaches it too
        "transformers": {"max_batch_size": serve.max_batch_size, "max_queue": serve.max_queue,
                         "quantization": serve.quantization, "prepack": serve.prepack},
        "llamacpp": {"options": serve.llamacpp, "max_queue": serve.max_queue},
        "vllm": {"options": serve.vllm},
    }.get(serve.backend, {})
    backend = inference.create(settings.serve.backend, base_path=base.path, adapter_dir=resolved.adapter_dir,
                               device=settings.serve.device, dtype="auto", model_id=resolved.name, **options)
    return ServedModel(backend, str(resolved.version), int(time.time()))


def _upstream(settings: Settings) -> InferenceBackend:
    serve = settings.serve
    key = serve.upstream_api_key.get_secret_value() if serve.upstream_api_key else None
    return inference.create("openai", model_id=settings.model_name, base_url=serve.upstream_url, api_key=key,
                            upstream_model=serve.upstream_model, timeout=serve.upstream_timeout_s)
