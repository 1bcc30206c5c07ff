"""The served model follows its alias: a promote or rollback reaches a running server without a restart.

Right after ``/admin/models/{name}/promote|rollback`` on this replica, and every
``serve.follow_alias_s`` seconds on every replica (so a move made by another replica or by
``changjak promote`` arrives too), the server resolves ``serve.model_uri`` again. When it names
another version trained on the same base model and the backend loads adapters live (vLLM's
multi-LoRA engine: ``add_adapter``), the new adapter is loaded and made the default, the served
version changes (``/v1/models``, ``x-changjak-model-version``, metrics, audit records), and the
response cache is invalidated. A backend that cannot, or a version on another base model, keeps
serving what it has and logs that a restart is needed; ``/readyz`` stays ready, since the old
version still answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from changjak.serve.deps import ServedModel

logger = logging.getLogger(__name__)
_lock = asyncio.Lock()


async def follow(app: Any) -> str | None:
    """Move the served model to the version its alias names now; the new version, or None if nothing moved."""
    from changjak import registry

    settings, served = app.state.settings, app.state.served
    if served is None or served.version is None or "@" not in settings.serve.model_uri:
        return None  # not from the registry, or pinned to one version
    async with _lock:
        served = app.state.served
        target = await asyncio.to_thread(registry.resolve, settings, settings.serve.model_uri)
        if target.version == served.version:
            return None
        current = await asyncio.to_thread(registry.resolve, settings, f"models:/{target.name}/{served.version}")
        add = getattr(served.backend, "add_adapter", None)
        if add is None or current.base_sha256 != target.base_sha256:
            why = "another base model" if add is not None else f"the {settings.serve.backend} backend loads adapters only at start"
            if getattr(app.state, "stale_version", None) != target.version:  # say it once per version
                logger.warning("%s now names v%s, but this server keeps serving v%s (%s): restart it to follow",
                               settings.serve.model_uri, target.version, served.version, why)
            app.state.stale_version = target.version
            return None
        await add(f"v{target.version}", target.adapter_dir, default=True)
        if hasattr(served.backend, "model_version"):  # the metrics wrapper labels by version
            served.backend.model_version = target.version
        app.state.served = ServedModel(served.backend, target.version, int(time.time()))
        app.state.stale_version = None
        if (cache := getattr(app.state, "cache", None)) is not None:
            await cache.invalidate()
        logger.info("now serving %s v%s (was v%s), adapter loaded live", target.name, target.version, served.version)
        return target.version


async def poll(app: Any, every_s: float) -> None:
    """Follow the alias every ``every_s`` seconds until cancelled; a failed look is logged and retried."""
    last_problem = None
    while True:
        await asyncio.sleep(every_s)
        try:
            await follow(app)
            last_problem = None
        except Exception as e:  # the registry may be down for a while; serving goes on
            if str(e) != last_problem:  # once per problem, not every poll
                logger.warning("could not check where %s points: %s", app.state.settings.serve.model_uri, e)
            last_problem = str(e)


@contextlib.asynccontextmanager
async def following(app: Any):  # noqa: ANN201 - an async context manager
    """Run :func:`poll` for the app's lifetime when the model came from the registry."""
    every = app.state.settings.serve.follow_alias_s
    task = asyncio.create_task(poll(app, every)) if every > 0 and app.state.served.version else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
