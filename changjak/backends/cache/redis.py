"""A cache in Redis, shared by every gateway replica that points at the same server.

    cache = RedisCache.load(url="redis://127.0.0.1:6379/0")      # or RedisCache(client) to share one
    await cache.set("changjak:resp:...", b"...", ttl_s=3600)

``connect(url)`` builds the redis-py asyncio client the gateway shares between this cache and the
rate limiter (``changjak.serve.limits``); whoever built the client closes it.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis


def connect(url: str) -> aioredis.Redis:
    """An asyncio client for ``url`` (connections are opened on first use)."""
    return aioredis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)


class RedisCache:
    def __init__(self, client: aioredis.Redis, *, owns_client: bool = False) -> None:
        self.client = client
        self._owns_client = owns_client

    @classmethod
    def load(cls, url: str | None = None, client: aioredis.Redis | None = None, **_: Any) -> RedisCache:
        if client is not None:
            return cls(client)
        if not url:
            raise ValueError("the redis cache needs a url or a client")
        return cls(connect(url), owns_client=True)

    async def get(self, key: str) -> bytes | None:
        return await self.client.get(key)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return await self.client.mget(keys)

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        await self.client.set(key, value, px=None if ttl_s is None else max(1, int(ttl_s * 1000)))

    async def incr(self, key: str, amount: int = 1) -> int:
        return int(await self.client.incrby(key, amount))

    async def delete(self, key: str) -> None:
        await self.client.delete(key)

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()
