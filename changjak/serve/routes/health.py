"""Probes for load balancers and Kubernetes: liveness and readiness, both without an API key.

``/healthz`` says the process is up. ``/readyz`` says the model generates: it asks the backend
for one token (greedy, a fixed prompt) and caches the answer for ``settings.serve.ready_probe_ttl_s``
seconds, so a probe every second costs one generation every few seconds; a real generation that
finished within that time counts as a passing probe, so a busy server is never probed. A probe
that fails or takes longer than ``ready_probe_timeout_s``, a backend that says it is not ready,
and a server that is draining (SIGTERM) all answer 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing

from fastapi import APIRouter, Request

from changjak.backends.inference import GenerationParams, InferenceBackend
from changjak.errors import ServiceUnavailable
from changjak.serve.deps import Served, SettingsDep
from changjak.settings import ServeSettings

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])
PROBE = [{"role": "user", "content": "안녕"}]
MESSAGES = {"backend_not_ready": "The model backend is not answering.",
            "backend_timeout": "The model backend did not generate a token in time."}


class Readiness:
    """The latest one-token probe of a backend, reused for ``ttl`` seconds."""

    def __init__(self, ttl: float, timeout: float) -> None:
        self.ttl, self.timeout = ttl, timeout
        self.checked_at = float("-inf")
        self.problem: str | None = "not probed yet"
        self._lock = asyncio.Lock()

    async def check(self, backend: InferenceBackend) -> str | None:
        """None when the backend generated lately, else what is wrong (``code``-like words)."""
        now = time.monotonic()
        if now - getattr(backend, "last_generated", float("-inf")) < self.ttl:  # a real one, lately
            return None
        if now - self.checked_at < self.ttl:
            return self.problem
        async with self._lock:  # one probe at a time, the others wait for its answer
            if time.monotonic() - self.checked_at >= self.ttl:
                self.problem = await self._probe(getattr(backend, "inner", backend))  # unmetered
                self.checked_at = time.monotonic()
        return self.problem

    async def _probe(self, backend: InferenceBackend) -> str | None:
        if not await backend.ready():
            return "backend_not_ready"
        try:
            async with asyncio.timeout(self.timeout):
                async with aclosing(backend.generate(PROBE, GenerationParams(max_tokens=1, temperature=0.0))) as out:
                    async for chunk in out:
                        if chunk.finish_reason is not None:
                            return None
        except TimeoutError:
            logger.warning("readiness probe: no token within %.1f s", self.timeout)
            return "backend_timeout"
        except Exception as e:  # noqa: BLE001 - any failure means not ready
            logger.warning("readiness probe failed: %s", e.__class__.__name__)
            return "backend_error"
        return "backend_error"


def readiness_of(request: Request, serve: ServeSettings) -> Readiness:
    state = request.app.state
    if getattr(state, "readiness", None) is None:
        state.readiness = Readiness(serve.ready_probe_ttl_s, serve.ready_probe_timeout_s)
    return state.readiness


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready: loading, failing, or draining"}})
async def readyz(request: Request, served: Served, settings: SettingsDep) -> dict[str, str | None]:
    """200 once the model generates a token (checked every few seconds), else 503."""
    lifecycle = getattr(request.app.state, "lifecycle", None)
    if lifecycle is not None and lifecycle.draining:
        raise ServiceUnavailable("The server is shutting down.", code="draining")
    if (problem := await readiness_of(request, settings.serve).check(served.backend)) is not None:
        raise ServiceUnavailable(MESSAGES.get(problem, "The model backend is not generating."), code=problem)
    return {"status": "ready", "model": served.model_id, "version": served.version}
