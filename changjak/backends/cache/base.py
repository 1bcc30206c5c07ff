"""What the gateway needs from a key-value cache: bytes in, bytes out, a counter, expiry.

    await cache.set("k", b"v", ttl_s=60)
    await cache.get("k")          # b"v", or None once expired or deleted
    await cache.get_many(["k", "x"])  # [b"v", None], in one round trip
    await cache.incr("gen")       # 1, 2, ... (a missing counter starts at 0)

Keys are plain strings the caller has already made safe (hashes, never user text).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class CacheBackend(Protocol):
    async def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None when missing or expired."""
        ...

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """``get`` of each key, in one round trip."""
        ...

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        """Store ``value``; it expires after ``ttl_s`` seconds (None: never)."""
        ...

    async def incr(self, key: str, amount: int = 1) -> int:
        """Add ``amount`` to the integer counter under ``key`` and return the new value."""
        ...

    async def delete(self, key: str) -> None:
        ...

    async def aclose(self) -> None:
        """Release connections (the cache's contents stay where they live)."""
        ...
