"""GET /v1/models: the model this server answers as."""

from __future__ import annotations

from fastapi import APIRouter

from changjak.serve.auth import ModelReader
from changjak.serve.deps import Served
from changjak.serve.protocol import ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models")
async def list_models(_: ModelReader, served: Served) -> ModelList:
    """List the served model."""
    return ModelList(data=[ModelCard(id=served.model_id, created=served.loaded_at)])
