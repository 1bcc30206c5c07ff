"""Key-value caches by name: ``create("memory", max_entries=1000)``, ``create("redis", url=...)``.

The Protocol is in :mod:`.base`. ``memory`` lives in this process (an LRU with expiry); ``redis``
is shared by every replica that points at the same server. The response cache
(``changjak.serve.cache``) stores its entries and its generation counter here.
"""

from __future__ import annotations

from typing import Any

from changjak.backends import load_class
from changjak.backends.cache.base import CacheBackend

CACHES = {
    "memory": "changjak.backends.cache.memory:MemoryCache",
    "redis": "changjak.backends.cache.redis:RedisCache",
}

__all__ = ["CACHES", "CacheBackend", "create"]


def create(name: str, **kwargs: Any) -> CacheBackend:
    """Build the cache registered as ``name`` (``redis`` is imported only now)."""
    return load_class(CACHES, name, kind="cache").load(**kwargs)
