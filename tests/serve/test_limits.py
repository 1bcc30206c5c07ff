"""Per-key limits in-process and on the real Redis, then through the HTTP API with the openai SDK."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import httpx
import openai
import pytest

from changjak.backends.inference.fake import FakeBackend
from changjak.errors import RateLimited
from changjak.serve.app import create_app
from changjak.serve.context import Caller
from changjak.serve.limits import Limiter, MemoryStore, budget_period
from changjak.settings import LimitSettings
from tests.serve.capture import Capture
from tests.serve.conftest import KEY, MODEL, StreamingASGITransport, serving

pytestmark = pytest.mark.anyio


def caller(key_id: str = "cj_test", **limits) -> Caller:
    return Caller(key_id=key_id, name="t", role="user", tenant="acme", **limits)


@pytest.fixture(params=["memory", "redis"])
async def make_limiter(request: pytest.FixtureRequest):
    """Limiters of one store kind; on Redis each test gets its own key prefix, and the clients close."""
    prefix = f"test:{uuid.uuid4().hex}"
    clients = []

    def make(**settings) -> Limiter:
        limits = LimitSettings(**settings)
        if request.param == "memory":
            return Limiter(limits, MemoryStore(), prefix=prefix)
        from changjak.backends.cache.redis import connect
        from changjak.serve.limits_redis import RedisStore

        clients.append(client := connect(request.getfixturevalue("redis_url")))
        return Limiter(limits, RedisStore(client), prefix=prefix)

    shared = make()  # one store per test for the memory kind, so "two limiters" can share it
    if request.param == "memory":
        def make(**settings) -> Limiter:  # noqa: F811 - memory limiters of one test share one store
            return Limiter(LimitSettings(**settings), shared.store, prefix=prefix)
    yield make
    for client in clients:
        async for key in client.scan_iter(f"{prefix}:*"):
            await client.delete(key)
        await client.aclose()


async def test_requests_per_minute_then_429_naming_the_limit(make_limiter) -> None:
    limiter = make_limiter()
    for _ in range(3):
        await limiter.admit(caller(rpm=3), tokens=1)
    with pytest.raises(RateLimited) as over:
        await limiter.admit(caller(rpm=3), tokens=1)
    assert over.value.code == "rate_limit_exceeded" and "requests per minute" in over.value.message
    assert 0 < over.value.retry_after <= 20  # a bucket of 3 per minute refills one in 20 s
    await limiter.admit(caller("cj_other", rpm=3), tokens=1)  # another key has its own


async def test_tokens_per_minute_are_reserved_then_settled_to_the_real_count(make_limiter) -> None:
    limiter = make_limiter()
    first = await limiter.admit(caller(tpm=100), tokens=60)
    with pytest.raises(RateLimited) as over:
        await limiter.admit(caller(tpm=100), tokens=60)
    assert over.value.code == "tokens_limit_exceeded"
    await first.settle(10)  # it used 10 of its 60: 50 come back
    await limiter.admit(caller(tpm=100), tokens=60)


async def test_concurrency_is_freed_when_a_request_settles(make_limiter) -> None:
    limiter = make_limiter()
    leases = [await limiter.admit(caller(concurrency=2), tokens=1) for _ in range(2)]
    with pytest.raises(RateLimited) as over:
        await limiter.admit(caller(concurrency=2), tokens=1)
    assert over.value.code == "concurrency_limit_exceeded"
    await leases[0].settle(1)
    await leases[0].settle(1)  # twice is once
    await limiter.admit(caller(concurrency=2), tokens=1)
    with pytest.raises(RateLimited):
        await limiter.admit(caller(concurrency=2), tokens=1)


async def test_a_slot_of_a_request_that_never_settles_lapses(make_limiter) -> None:
    limiter = make_limiter(concurrency_lease_s=0.05)
    await limiter.admit(caller(concurrency=1), tokens=1)  # its replica "died": never settled
    with pytest.raises(RateLimited):
        await limiter.admit(caller(concurrency=1), tokens=1)
    await asyncio.sleep(0.1)
    await limiter.admit(caller(concurrency=1), tokens=1)


async def test_the_budget_is_insufficient_quota_until_the_period_ends(make_limiter) -> None:
    limiter = make_limiter(budget_period="day")
    lease = await limiter.admit(caller(budget=100), tokens=90)
    await lease.settle(80)
    with pytest.raises(RateLimited) as over:
        await limiter.admit(caller(budget=100), tokens=30)
    assert over.value.code == "insufficient_quota"
    _, left = budget_period(datetime.now(UTC).timestamp(), "day")
    assert abs(over.value.retry_after - left) < 5
    await limiter.admit(caller(budget=100), tokens=20)


async def test_a_keys_own_limit_wins_over_the_default_and_none_is_unlimited(make_limiter) -> None:
    limiter = make_limiter(default_rpm=1)
    await limiter.admit(caller("cj_a"), tokens=1)
    with pytest.raises(RateLimited):
        await limiter.admit(caller("cj_a"), tokens=1)
    for _ in range(3):
        await limiter.admit(caller("cj_b", rpm=5), tokens=1)
    free = make_limiter()
    lease = await free.admit(caller("cj_c"), tokens=10**9)
    assert lease.store is None  # nothing to count: no round trip at all


async def test_a_cached_answer_takes_a_request_but_no_tokens_and_no_slot(make_limiter) -> None:
    limiter = make_limiter()
    limits = {"rpm": 3, "tpm": 10, "concurrency": 1, "budget": 10}
    held = await limiter.admit(caller(**limits), tokens=10)
    for _ in range(2):  # tokens, the slot and the budget are all taken: a hit still passes
        lease = await limiter.admit(caller(**limits), tokens=10, hold=False)
        assert lease.decision["reserved"] == 0
        await lease.settle(0)
    with pytest.raises(RateLimited) as over:  # but it is a request
        await limiter.admit(caller(**limits), tokens=10, hold=False)
    assert over.value.code == "rate_limit_exceeded"
    await held.settle(10)


@pytest.mark.parametrize("limit", ["rpm", "concurrency"])
async def test_two_replicas_together_let_exactly_n_of_a_burst_through(make_limiter, limit: str) -> None:
    one, two = make_limiter(), make_limiter()  # on Redis: two clients, as two gateway processes
    n, k = 5, 7

    async def attempt(i: int) -> bool:
        try:
            await (one if i % 2 else two).admit(caller(**{limit: n}), tokens=1)
            return True
        except RateLimited:
            return False

    admitted = await asyncio.gather(*(attempt(i) for i in range(n + k)))
    assert sum(admitted) == n


def test_budget_periods_are_calendar_days_and_months_in_utc() -> None:
    moment = datetime(2026, 12, 31, 23, 0, tzinfo=UTC).timestamp()
    assert budget_period(moment, "day") == ("2026-12-31", 3600.0)
    assert budget_period(moment, "month") == ("2026-12", 3600.0)


def test_the_limiter_follows_budget_periods_across_their_ends() -> None:
    """It works the calendar out once per period, and moves on when one ends (or the clock jumps back)."""
    limiter = Limiter(LimitSettings(budget_period="month"), MemoryStore())
    moment = datetime(2026, 12, 31, 23, 0, tzinfo=UTC).timestamp()
    for now in (moment, moment + 1800, moment + 3600, moment + 7200, moment - 40 * 86_400, moment):
        assert limiter._period(now) == budget_period(now, "month")


# Through the API: the openai SDK's RateLimitError, Retry-After, and whose limit applies.


async def test_the_sdk_gets_a_rate_limit_error_with_retry_after(make_settings) -> None:
    settings = make_settings(api_keys=KEY, limits={"default_rpm": 2})
    async with serving(create_app(settings, FakeBackend(MODEL))) as sdk:
        for _ in range(2):
            await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "안녕"}])
        with pytest.raises(openai.RateLimitError) as over:
            await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "안녕"}])
    assert over.value.status_code == 429 and over.value.code == "rate_limit_exceeded"
    assert over.value.type == "rate_limit_error"
    assert 1 <= int(over.value.response.headers["retry-after"]) <= 30


async def test_x_forwarded_for_never_changes_whose_limit_applies(make_settings) -> None:
    settings = make_settings(api_keys=f"{KEY},{KEY}-second", limits={"default_rpm": 1})
    app = create_app(settings, FakeBackend(MODEL))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "안녕"}]}
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")

    def post(key: str, forwarded: str):
        return http.post("/v1/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": forwarded})

    async with app.router.lifespan_context(app), http:
        assert (await post(KEY, "203.0.113.1")).status_code == 200
        assert (await post(KEY, "198.51.100.7")).status_code == 429  # same key, "another client"
        assert (await post(KEY, "203.0.113.1, 10.0.0.1")).status_code == 429
        assert (await post(f"{KEY}-second", "203.0.113.1")).status_code == 200  # same address, own key


async def test_a_stream_holds_its_slot_until_the_client_hangs_up(make_settings) -> None:
    settings = make_settings(api_keys=KEY, limits={"default_concurrency": 1})
    fake = FakeBackend(MODEL, reply="가" * 500, delay=0.002)
    app = create_app(settings, fake)
    capture = Capture(app)
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "길게"}], "max_tokens": 60}
    async with serving(app, transport=StreamingASGITransport(capture)) as sdk:
        stream = await sdk.chat.completions.create(**ask, stream=True)
        async for chunk in stream:
            if chunk.choices[0].delta.content:
                break
        with pytest.raises(openai.RateLimitError) as over:
            await sdk.chat.completions.create(**ask)
        assert over.value.code == "concurrency_limit_exceeded"
        await stream.close()
        reply = await sdk.chat.completions.create(**ask)  # the slot came back with the hang-up
    assert reply.choices[0].message.content == "가" * 60
    stream_ctx, refused_ctx, whole_ctx = sorted(capture.contexts, key=lambda c: c.started)
    assert refused_ctx.decisions["limits"]["exceeded"] == "concurrency"
    hung_up = stream_ctx.decisions["limits"]
    assert 0 < hung_up["charged"] < hung_up["reserved"]  # charged what it made, not the reservation
    assert whole_ctx.completion_tokens == 60 and whole_ctx.decisions["limits"]["charged"] > 60


async def test_two_gateways_on_one_redis_let_exactly_n_of_a_burst_through(make_settings, redis_url: str) -> None:
    n, k = 4, 6
    settings = make_settings(api_keys=KEY, redis_url=redis_url, redis_prefix=f"test:{uuid.uuid4().hex}",
                             limits={"default_rpm": n})
    apps = [create_app(settings, FakeBackend(MODEL)) for _ in range(2)]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "안녕"}]}
    async with serving(apps[0]) as one, serving(apps[1]) as two:
        async def attempt(i: int) -> bool:
            try:
                await (one if i % 2 else two).chat.completions.create(**body)
                return True
            except openai.RateLimitError:
                return False

        admitted = await asyncio.gather(*(attempt(i) for i in range(n + k)))
        client = apps[0].state.cache.backend.client  # the apps' shared Redis client: clean up the test's keys
        async for key in client.scan_iter(f"{settings.redis_prefix}:*"):
            await client.delete(key)
    assert sum(admitted) == n
