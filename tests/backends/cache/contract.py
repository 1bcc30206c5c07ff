"""What every cache backend must do; test_memory.py and test_redis.py run it on theirs."""

from __future__ import annotations

import asyncio

from changjak.backends.cache import CacheBackend


async def check_contract(cache: CacheBackend, prefix: str) -> None:
    assert isinstance(cache, CacheBackend)
    assert await cache.get(f"{prefix}:missing") is None

    await cache.set(f"{prefix}:k", "값".encode())
    assert await cache.get(f"{prefix}:k") == "값".encode()
    await cache.set(f"{prefix}:k", b"v2")
    assert await cache.get(f"{prefix}:k") == b"v2"
    assert await cache.get_many([f"{prefix}:k", f"{prefix}:missing"]) == [b"v2", None]
    await cache.delete(f"{prefix}:k")
    assert await cache.get(f"{prefix}:k") is None
    await cache.delete(f"{prefix}:never-set")  # deleting what is not there is fine

    assert await cache.incr(f"{prefix}:n") == 1
    assert await cache.incr(f"{prefix}:n", 5) == 6
    assert await cache.get(f"{prefix}:n") == b"6"

    await cache.set(f"{prefix}:short", b"x", ttl_s=0.05)
    assert await cache.get(f"{prefix}:short") == b"x"
    await asyncio.sleep(0.15)
    assert await cache.get(f"{prefix}:short") is None
