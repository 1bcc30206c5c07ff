"""Probes for load balancers and Kubernetes: liveness and readiness, both without an API key."""

from __future__ import annotations

from fastapi import APIRouter

from changjak.errors import ServiceUnavailable
from changjak.serve.deps import Served

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(served: Served) -> dict[str, str | None]:
    """200 once the model is loaded and its backend answers, else 503."""
    if not await served.backend.ready():
        raise ServiceUnavailable("The model backend is not answering.", code="backend_not_ready")
    return {"status": "ready", "model": served.model_id, "version": served.version}
