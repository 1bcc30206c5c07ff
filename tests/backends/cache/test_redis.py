"""The Redis cache, against the real Redis (skipped when it is down, failed under CI=true)."""

from __future__ import annotations

import uuid

import pytest

from changjak.backends import cache
from changjak.backends.cache.redis import RedisCache, connect
from tests.backends.cache.contract import check_contract

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_it_keeps_the_contract(redis_url: str) -> None:
    prefix = f"test:cache:{uuid.uuid4().hex}"
    redis_cache = cache.create("redis", url=redis_url)
    try:
        await check_contract(redis_cache, prefix)
    finally:
        await redis_cache.client.delete(f"{prefix}:n")
        await redis_cache.aclose()


async def test_two_clients_see_the_same_values_and_a_shared_client_is_not_closed(redis_url: str) -> None:
    key = f"test:cache:{uuid.uuid4().hex}"
    client = connect(redis_url)
    one, two = RedisCache(client), cache.create("redis", url=redis_url)
    try:
        await one.set(key, b"shared", ttl_s=10)
        assert await two.get(key) == b"shared"
        await one.aclose()
        assert await client.ping()  # a cache handed a client leaves closing it to its owner
    finally:
        await client.delete(key)
        await client.aclose()
        await two.aclose()
