"""What routes depend on, as ``Annotated`` aliases: the settings, the served model, the safety engine.

The app keeps both on ``app.state`` (set by ``create_app`` and its lifespan), so tests build an
app with their own settings and backend instead of overriding globals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from changjak.backends.inference import InferenceBackend
from changjak.errors import ServiceUnavailable
from changjak.safety.policy import SafetyEngine
from changjak.serve.cache import ResponseCache
from changjak.serve.limits import Limiter
from changjak.settings import Settings


@dataclass(frozen=True)
class ServedModel:
    backend: InferenceBackend
    version: str | None  # the registry version, when it came from the registry
    loaded_at: int  # unix time

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    @property
    def fingerprint(self) -> str | None:
        """``system_fingerprint`` in responses: which registered version answered."""
        return f"{self.model_id}-v{self.version}" if self.version else None

    @property
    def headers(self) -> dict[str, str]:
        return {"x-changjak-model-version": self.version} if self.version else {}


async def get_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    return request.app.state.settings


async def get_served(request: Request) -> ServedModel:
    """The loaded model; 503 while it is not loaded."""
    served: ServedModel | None = request.app.state.served
    if served is None:
        raise ServiceUnavailable("The model is not loaded yet; retry shortly.", code="model_not_ready")
    return served


async def get_safety(request: Request) -> SafetyEngine:
    """The safety engine the app was built with."""
    return request.app.state.safety


def opened(request: Request, name: str, *, what: str = "The server", code: str = "not_ready") -> Any:
    """``app.state.<name>``, built in the lifespan; 503 (retry shortly) while it is not there yet."""
    part = getattr(request.app.state, name, None)
    if part is None:
        raise ServiceUnavailable(f"{what} is not ready yet; retry shortly.", code=code)
    return part


async def get_cache(request: Request) -> ResponseCache:
    """The response cache (built in the lifespan: in Redis when configured)."""
    return opened(request, "cache")


async def get_limiter(request: Request) -> Limiter:
    """The per-key limiter (built in the lifespan: in Redis when configured)."""
    return opened(request, "limiter")


@dataclass(frozen=True)
class Gateway:
    """Everything the chat route needs from the app, as one dependency (each costs FastAPI ~50 µs)."""

    settings: Settings
    served: ServedModel
    safety: SafetyEngine
    cache: ResponseCache
    limiter: Limiter


async def get_gateway(request: Request) -> Gateway:
    """The app's parts for one chat request; 503 while the model or the stores are not ready."""
    state = request.app.state
    return Gateway(state.settings, await get_served(request), state.safety, await get_cache(request),
                   await get_limiter(request))


SettingsDep = Annotated[Settings, Depends(get_settings)]
GatewayDep = Annotated[Gateway, Depends(get_gateway)]
Safety = Annotated[SafetyEngine, Depends(get_safety)]
Served = Annotated[ServedModel, Depends(get_served)]
Cache = Annotated[ResponseCache, Depends(get_cache)]
Limits = Annotated[Limiter, Depends(get_limiter)]
