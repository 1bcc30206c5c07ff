"""An in-process cache: an LRU of at most ``max_entries`` values, each with its own expiry.

Every coroutine here finishes without awaiting, so on one event loop each call is atomic. It is
private to its process: replicas each have their own (use ``redis`` to share one).
"""

from __future__ import annotations

import time
from collections import OrderedDict


class MemoryCache:
    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[bytes | int, float | None]] = OrderedDict()

    @classmethod
    def load(cls, max_entries: int = 10_000, **_: object) -> MemoryCache:
        return cls(max_entries)

    def __len__(self) -> int:
        return len(self._data)

    def _live(self, key: str) -> bytes | int | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def _put(self, key: str, value: bytes | int, expires: float | None) -> None:
        self._data[key] = (value, expires)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)  # least recently used

    async def get(self, key: str) -> bytes | None:
        value = self._live(key)
        return str(value).encode() if isinstance(value, int) else value

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [await self.get(key) for key in keys]

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self._put(key, value, None if ttl_s is None else time.monotonic() + ttl_s)

    async def incr(self, key: str, amount: int = 1) -> int:
        current = self._live(key)
        expires = self._data[key][1] if current is not None else None  # a counter keeps its expiry
        value = (int(current) if current is not None else 0) + amount
        self._put(key, value, expires)
        return value

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def aclose(self) -> None:
        self._data.clear()
