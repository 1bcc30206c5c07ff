"""The in-process cache: the shared contract, plus its LRU bound."""

from __future__ import annotations

import pytest

from changjak.backends import cache
from changjak.backends.cache.memory import MemoryCache
from tests.backends.cache.contract import check_contract

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_it_keeps_the_contract() -> None:
    await check_contract(cache.create("memory"), "t")


async def test_it_forgets_the_least_recently_used_beyond_max_entries() -> None:
    lru = MemoryCache(max_entries=2)
    await lru.set("a", b"1")
    await lru.set("b", b"2")
    assert await lru.get("a") == b"1"  # a is now the most recent
    await lru.set("c", b"3")
    assert (await lru.get("a"), await lru.get("b"), await lru.get("c")) == (b"1", None, b"3")
    assert len(lru) == 2


async def test_a_counter_keeps_its_expiry() -> None:
    lru = MemoryCache()
    await lru.set("n", b"1", ttl_s=60)
    assert await lru.incr("n") == 2
    assert lru._data["n"][1] is not None


def test_an_unknown_backend_lists_the_known_ones() -> None:
    from changjak.errors import BackendError

    with pytest.raises(BackendError, match="memory, redis"):
        cache.create("memcached")
