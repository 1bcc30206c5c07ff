"""Who is calling, and may they: API keys, roles and scopes for every route.

Every route but the probes declares one scope, as an ``Annotated`` dependency::

    @router.post("/admin/keys")
    async def create_key(caller: KeyManager) -> ...:          # = Depends(require("keys:manage"))

``require(scope)`` authenticates the ``Authorization: Bearer <key>`` header (401 when it is missing,
wrong, revoked or expired), puts the :class:`~changjak.serve.context.Caller` on the request
context, and answers 403 ``permission_error`` naming the scope when the caller's role lacks it.

Keys are managed ones (``changjak keys create``, ``/admin/keys``; see ``changjak.serve.keys``) or
bootstrap ones from ``CHANGJAK_API_KEYS``: those are hashed once when the app is built, compared in
constant time, and act as ``admin`` of every tenant (``*``) so the first admin can make real keys.

Tenants: a caller whose tenant is ``*`` acts on every tenant; any other caller sees and manages only
its own (:func:`can_see`), and a foreign id answers exactly like a missing one.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from changjak.errors import PermissionDenied, Unauthenticated
from changjak.serve.context import Caller, context_of

logger = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False, description="An API key (`changjak keys create`)")

ALL_TENANTS = "*"
USER_SCOPES = frozenset({"inference", "feedback:write", "models:read"})  # feedback:write = its own only
ROLE_SCOPES: dict[str, frozenset[str]] = {  # the single source of who may do what
    "admin": frozenset({"keys:manage", "models:promote", "audit:read", "metrics:read", "feedback:review",
                        "inference", "feedback:write", "prompts:write", "rag:ingest", "models:read"}),
    "operator": frozenset({"models:promote", "metrics:read", "feedback:review", "models:read"}),
    "developer": frozenset({"inference", "prompts:write", "rag:ingest", "feedback:write", "models:read"}),
    "user": USER_SCOPES,
}
ROLES = tuple(ROLE_SCOPES)
SCOPES = frozenset().union(*ROLE_SCOPES.values())
# Routes that need no key. /metrics joins them when settings.auth.metrics_public (see public_paths).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})


class KeyRing:
    """SHA-256 hashes of the bootstrap keys (``CHANGJAK_API_KEYS``)."""

    def __init__(self, keys: Iterable[SecretStr]) -> None:
        self._hashes = [_digest(k.get_secret_value()) for k in keys]

    def __len__(self) -> int:
        return len(self._hashes)

    def identify(self, key: str) -> str | None:
        """The key's id (a prefix of its hash) if it is one of ours, else None."""
        presented = _digest(key)
        found = False
        for stored in self._hashes:  # every hash is compared, so timing says nothing about which
            found |= secrets.compare_digest(stored, presented)
        return presented.hex()[:12] if found else None


def bootstrap_caller(key_id: str) -> Caller:
    return Caller(key_id=f"bootstrap_{key_id[:8]}", name="bootstrap", role="admin", tenant=ALL_TENANTS,
                  scopes=ROLE_SCOPES["admin"], bootstrap=True)


async def authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller:
    """The caller behind the request's key (also set as ``ctx.caller``); 401 when there is none."""
    state = request.app.state
    ring: KeyRing = state.keys
    store = getattr(state, "key_store", None)  # built in the lifespan
    if not ring and store is None:
        raise Unauthenticated("This server has no API keys configured, so it refuses every request: "
                              "set CHANGJAK_API_KEYS (comma-separated) and restart it.")
    if credentials is None:
        raise Unauthenticated("Missing API key: send the header 'Authorization: Bearer <key>'.")
    presented = credentials.credentials
    if (key_id := ring.identify(presented)) is not None:
        caller = bootstrap_caller(key_id)
    elif store is not None and store.looks_managed(presented):
        caller = await store.verify(presented)  # 401 itself when unknown, revoked or expired
    else:
        logger.info("rejected a request with an unknown API key")
        raise Unauthenticated("Incorrect API key provided." if ring else
                              "Incorrect API key provided (make one with `changjak keys create`; "
                              "CHANGJAK_API_KEYS holds none).")
    if (ctx := context_of(request)) is not None:
        ctx.caller = caller
    return caller


class Require:
    """A dependency: the authenticated caller, who must hold ``scope`` (inspectable: ``.scope``).

    ``public_if`` names a boolean of ``settings.auth``; while it is true the route needs no key and
    the dependency gives None (``/metrics`` with ``metrics_public``).
    """

    def __init__(self, scope: str, *, public_if: str | None = None) -> None:
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}; add it to ROLE_SCOPES in changjak/serve/auth.py")
        self.scope, self.public_if = scope, public_if

    def __repr__(self) -> str:
        return f"Require({self.scope!r})"

    async def __call__(self, request: Request,
                       credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
                       ) -> Caller | None:
        if self.public_if and getattr(request.app.state.settings.auth, self.public_if):
            return None
        caller = await authenticate(request, credentials)
        if self.scope not in caller.scopes:
            raise PermissionDenied(f"This key (role '{caller.role}') lacks the scope '{self.scope}' "
                                   "that this route needs.", code="missing_scope")
        return caller


def require(scope: str, *, public_if: str | None = None) -> Require:
    return Require(scope, public_if=public_if)


def can_see(caller: Caller, tenant: str | None) -> bool:
    """Whether ``caller`` may see or manage something of ``tenant``."""
    return caller.tenant == ALL_TENANTS or caller.tenant == tenant


def tenant_filter(caller: Caller) -> str | None:
    """The tenant a query must be limited to, or None for a caller of every tenant."""
    return None if caller.tenant == ALL_TENANTS else caller.tenant


def declared_scopes(route: Any) -> frozenset[str]:
    """The scopes a route's dependencies require (empty: it declares none)."""
    found: set[str] = set()
    stack = [getattr(route, "dependant", None)]
    while stack:
        if (dependant := stack.pop()) is None:
            continue
        if isinstance(dependant.call, Require):
            found.add(dependant.call.scope)
        stack.extend(dependant.dependencies)
    return frozenset(found)


def all_routes(app: Any) -> list[Any]:
    """Every route of ``app``, those of included routers too, each with ``path``, ``methods``, ``dependant``."""
    from fastapi import routing

    flatten = getattr(routing, "iter_route_contexts", None)  # FastAPI >= 0.165 includes routers lazily
    return list(flatten(app.routes)) if flatten else list(app.routes)


def public_paths(settings: Any) -> frozenset[str]:
    """Paths that need no key under these settings."""
    return PUBLIC_PATHS | ({"/metrics"} if settings.auth.metrics_public else set())


Principal = Annotated[Caller, Depends(require("inference"))]  # inference: /v1/chat/completions ...
ModelReader = Annotated[Caller, Depends(require("models:read"))]
KeyManager = Annotated[Caller, Depends(require("keys:manage"))]
ModelPromoter = Annotated[Caller, Depends(require("models:promote"))]
AuditReader = Annotated[Caller, Depends(require("audit:read"))]
FeedbackWriter = Annotated[Caller, Depends(require("feedback:write"))]
FeedbackReviewer = Annotated[Caller, Depends(require("feedback:review"))]
PromptWriter = Annotated[Caller, Depends(require("prompts:write"))]
RagIngester = Annotated[Caller, Depends(require("rag:ingest"))]
MetricsReader = Annotated[Caller | None, Depends(require("metrics:read", public_if="metrics_public"))]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
