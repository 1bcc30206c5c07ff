"""API keys: every /v1 request needs ``Authorization: Bearer <key>``.

Keys come from ``CHANGJAK_API_KEYS`` (comma-separated). They are hashed once when the app is built
and only the hashes are kept; a presented key is hashed and compared with each stored hash in
constant time. A server with no keys configured refuses every request rather than run open. Keys
never reach a log line or an error message; a request is identified by a short prefix of its
key's hash.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from changjak.errors import Unauthenticated

logger = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False, description="An API key from CHANGJAK_API_KEYS")


class KeyRing:
    """SHA-256 hashes of the accepted API keys."""

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


async def authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """The calling key's id; 401 when the key is missing or wrong, or none is configured."""
    keys: KeyRing = request.app.state.keys
    if not keys:
        raise Unauthenticated("This server has no API keys configured, so it refuses every request: "
                              "set CHANGJAK_API_KEYS (comma-separated) and restart it.")
    if credentials is None:
        raise Unauthenticated("Missing API key: send the header 'Authorization: Bearer <key>'.")
    key_id = keys.identify(credentials.credentials)
    if key_id is None:
        logger.info("rejected a request with an unknown API key")
        raise Unauthenticated("Incorrect API key provided.")
    return key_id


Principal = Annotated[str, Depends(authenticate)]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
