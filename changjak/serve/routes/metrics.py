"""GET /metrics: the gateway's Prometheus metrics (all workers'), for a scraper.

Public by default (a scraper inside the cluster); with ``settings.auth.metrics_public: false`` it
needs a key with the ``metrics:read`` scope (admin, operator). See ``changjak.monitor.metrics``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from changjak.serve.auth import MetricsReader

router = APIRouter(tags=["metrics"])
_TEXT = {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format"}


@router.get("/metrics", response_class=Response, responses={200: _TEXT})
async def metrics(_: MetricsReader, request: Request) -> Response:
    """The metrics in the Prometheus text exposition format."""
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)
