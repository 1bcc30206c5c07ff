"""The response cache: keys (hashed, no text), invalidation across replicas, and hits over HTTP that
still pass the output checks."""

from __future__ import annotations

import json
import re
import uuid

import httpx
import pytest

from changjak.backends.cache.memory import MemoryCache
from changjak.backends.inference import GenerationParams
from changjak.backends.inference.fake import FakeBackend
from changjak.serve.app import create_app
from changjak.serve.cache import CachedAnswer, Lookup, ResponseCache, invalidate_sync, wanted
from changjak.serve.protocol import ChatCompletionRequest, ChatMessage
from changjak.serve.routes.chat import _generation_params
from tests.serve.capture import Capture
from tests.serve.conftest import KEY, MODEL, serving

pytestmark = pytest.mark.anyio
SECRET = "제 전화번호는 010-1234-5678 이고 이름은 김민수예요"
GREEDY = GenerationParams(max_tokens=32, temperature=0)


def messages(text: str = SECRET) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


@pytest.fixture(params=["memory", "redis"])
async def make_cache(request: pytest.FixtureRequest):
    """Caches of one kind under a fresh prefix; two made in one test share one store, like replicas."""
    prefix = f"test:{uuid.uuid4().hex}"
    clients, memory = [], MemoryCache()

    def make() -> ResponseCache:
        if request.param == "memory":
            return ResponseCache(memory, ttl_s=60, prefix=prefix)
        from changjak.backends.cache.redis import RedisCache, connect

        clients.append(client := connect(request.getfixturevalue("redis_url")))
        return ResponseCache(RedisCache(client), ttl_s=60, prefix=prefix)

    yield make
    for client in clients:
        async for key in client.scan_iter(f"{prefix}:*"):
            await client.delete(key)
        await client.aclose()


async def test_keys_differ_by_tenant_version_params_and_messages_only(make_cache) -> None:
    cache = make_cache()
    base = cache.key("acme", MODEL, "3", None, GREEDY, messages())
    assert base == cache.key("acme", MODEL, "3", None, GREEDY, messages(f"  {SECRET}\n"))
    decomposed = "\u1112\u1161\u11ab"  # 한 as jamo: NFC makes it the same message
    assert cache.key("acme", MODEL, "3", None, GREEDY, messages("한")) == \
        cache.key("acme", MODEL, "3", None, GREEDY, messages(decomposed))
    others = [
        cache.key("other", MODEL, "3", None, GREEDY, messages()),
        cache.key("acme", MODEL, "4", None, GREEDY, messages()),
        cache.key("acme", MODEL, "3", "p2", GREEDY, messages()),
        cache.key("acme", MODEL, "3", None, GenerationParams(max_tokens=33, temperature=0), messages()),
        cache.key("acme", MODEL, "3", None, GenerationParams(max_tokens=32, temperature=0, stop=["끝"]),
                        messages()),
        cache.key("acme", MODEL, "3", None, GenerationParams(max_tokens=32, temperature=0, seed=1),
                        messages()),
        cache.key("acme", MODEL, "3", None, GREEDY, messages(SECRET + "!")),
        cache.key("acme", MODEL, "3", None, GREEDY, [ChatMessage(role="system", content=SECRET)]),
    ]
    assert len({base, *others}) == len(others) + 1


async def test_a_key_holds_no_text_of_the_request(make_cache) -> None:
    cache = make_cache()
    key = cache.key("acme", MODEL, "3", None, GREEDY, messages())
    assert re.fullmatch(r"test:[0-9a-f]{32}:resp:[0-9a-f]{64}", key)
    assert "acme" not in key and "김민수" not in key and MODEL not in key


async def test_put_get_and_invalidate_seen_by_every_replica(make_cache) -> None:
    one, two = make_cache(), make_cache()
    answer = CachedAnswer("비가 온다.", "stop", 12, 5)
    missed = await one.lookup("acme", MODEL, "3", None, GREEDY, messages())
    assert missed.hit is None and missed.generation == 0
    await one.store(missed, answer)
    assert (await two.lookup("acme", MODEL, "3", None, GREEDY, messages())).hit == answer
    assert await two.invalidate() == 1
    after = await one.lookup("acme", MODEL, "3", None, GREEDY, messages())
    assert after.hit is None and after.generation == 1
    await one.store(missed, answer)  # made while the cache was being invalidated: already stale
    assert (await two.lookup("acme", MODEL, "3", None, GREEDY, messages())).hit is None
    await one.store(after, answer)
    assert (await two.lookup("acme", MODEL, "3", None, GREEDY, messages())).hit == answer


async def test_a_failing_store_is_a_miss_not_an_error() -> None:
    class Down(MemoryCache):
        async def get_many(self, keys: list[str]) -> list[bytes | None]:
            raise ConnectionError("redis is down")

        async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
            raise ConnectionError("redis is down")

    cache = ResponseCache(Down(), ttl_s=60)
    assert await cache.lookup("acme", MODEL, None, None, GREEDY, messages()) is None
    await cache.store(Lookup("k", 0, None), CachedAnswer("x", "stop", 1, 1))


def test_only_deterministic_or_opted_in_requests_use_it() -> None:
    sampled = GenerationParams(temperature=0.7)
    assert wanted({}, GREEDY) and wanted({}, GenerationParams(temperature=1, top_p=1e-9))
    assert not wanted({}, sampled)
    assert wanted({"x-changjak-cache": "allow"}, sampled)
    assert not wanted({"x-changjak-cache": "skip"}, GREEDY)


def test_the_command_line_invalidates_the_redis_cache(make_settings, redis_url: str) -> None:
    import redis

    prefix = f"test:{uuid.uuid4().hex}"
    assert invalidate_sync(make_settings(redis_url=redis_url, redis_prefix=prefix))
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.get(f"{prefix}:resp:generation") == b"1"
    finally:
        client.delete(f"{prefix}:resp:generation")
        client.close()
    assert not invalidate_sync(make_settings())  # an in-process cache is its server's own


# Over HTTP


def ask(content: str = "비 오는 날의 짧은 시", **kw) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "temperature": 0, **kw}


@pytest.fixture
def cached_app(serve_settings):
    fake = FakeBackend(MODEL)
    app = create_app(serve_settings, fake)
    return app, fake, Capture(app)


async def test_the_same_greedy_question_is_answered_once(cached_app) -> None:
    app, fake, capture = cached_app
    async with serving(app, transport=httpx.ASGITransport(app=capture)) as sdk:
        first = await sdk.chat.completions.with_raw_response.create(**ask())
        fake.seen = []
        second = await sdk.chat.completions.with_raw_response.create(**ask())
        assert fake.seen == []  # the model was not asked again
        other = await sdk.chat.completions.with_raw_response.create(**ask(max_tokens=5))
    assert (first.headers["x-changjak-cache"], second.headers["x-changjak-cache"]) == ("miss", "hit")
    assert other.headers["x-changjak-cache"] == "miss"
    assert first.parse().choices[0].message.content == second.parse().choices[0].message.content
    assert second.parse().usage == first.parse().usage
    assert [c.decisions["cache"] for c in capture.contexts] == ["miss", "hit", "miss"]
    assert capture.contexts[1].completion_tokens == 0  # the model processed nothing for a hit
    assert capture.contexts[1].decisions["safety"]["answer"]  # yet the answer was checked


async def test_sampled_requests_skip_it_unless_they_opt_in(cached_app) -> None:
    app, fake, _ = cached_app
    async with serving(app) as sdk:
        for _ in range(2):
            raw = await sdk.chat.completions.with_raw_response.create(**ask(temperature=0.8))
            assert "x-changjak-cache" not in raw.headers
        allow = {"X-Changjak-Cache": "allow"}
        await sdk.chat.completions.create(**ask(temperature=0.8), extra_headers=allow)
        raw = await sdk.chat.completions.with_raw_response.create(**ask(temperature=0.8), extra_headers=allow)
        assert raw.headers["x-changjak-cache"] == "hit"


async def test_a_stream_is_stored_and_a_hit_replays_as_a_stream(cached_app) -> None:
    app, fake, _ = cached_app
    async with serving(app) as sdk:
        stream = await sdk.chat.completions.create(**ask(stream=True))
        fresh = "".join([c.choices[0].delta.content or "" async for c in stream])
        fake.seen = []
        whole = await sdk.chat.completions.create(**ask())
        assert whole.choices[0].message.content == fresh and fake.seen == []
        replay = await sdk.chat.completions.create(**ask(stream=True, stream_options={"include_usage": True}))
        chunks = [c async for c in replay]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == fresh
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-1].usage == whole.usage
    assert len({c.id for c in chunks}) == 1 and fake.seen == []


async def test_invalidate_on_the_app_forgets_every_answer(cached_app) -> None:
    app, fake, _ = cached_app
    async with serving(app) as sdk:
        await sdk.chat.completions.create(**ask())
        await app.state.cache.invalidate()  # what promote/rollback call
        raw = await sdk.chat.completions.with_raw_response.create(**ask())
    assert raw.headers["x-changjak-cache"] == "miss"


async def plant(app, serve_settings, content: str) -> None:
    """Put ``content`` in the cache as the answer to ask(), as if an older policy had let it through."""
    body = ChatCompletionRequest.model_validate(ask())
    cache = app.state.cache
    key = cache.key("*", MODEL, None, None, _generation_params(body, serve_settings.serve),
                    body.messages)  # "*": the tenant of a bootstrap key
    await cache.put(key, CachedAnswer(content, "stop", 3, 4), await cache.generation())


async def test_a_hit_goes_through_the_output_checks_again(cached_app, serve_settings) -> None:
    app, fake, _ = cached_app
    async with serving(app) as sdk:
        await plant(app, serve_settings, "연락처: 010-1234-5678 <script>x</script>")
        reply = await sdk.chat.completions.with_raw_response.create(**ask())
    assert reply.headers["x-changjak-cache"] == "hit"
    content = reply.parse().choices[0].message.content
    assert "010-1234-5678" not in content and "<script>" not in content


async def test_a_hit_the_policy_now_withholds_is_a_content_filter(make_settings) -> None:
    settings = make_settings(api_keys=KEY, safety={"actions": {"pii": "block"}})
    app = create_app(settings, FakeBackend(MODEL))
    async with serving(app) as sdk:
        await plant(app, settings, "연락처: 010-1234-5678")
        whole = await sdk.chat.completions.create(**ask())
        raw = await sdk.chat.completions.with_raw_response.create(**ask(stream=True))
        events = (await raw.http_response.aread()).decode().strip().split("\n\n")
    assert (whole.choices[0].message.content, whole.choices[0].finish_reason) == ("", "content_filter")
    assert json.loads(events[-3].removeprefix("data: "))["choices"][0]["finish_reason"] == "content_filter"
    assert json.loads(events[-2].removeprefix("data: "))["error"]["code"] == "content_filter"
    assert "010-1234-5678" not in "".join(events)


async def test_an_answer_handing_back_the_users_own_pii_is_never_stored(make_settings) -> None:
    settings = make_settings(api_keys=KEY, safety={"reversible_pii": ["phone"]})
    async with serving(create_app(settings, FakeBackend(MODEL))) as sdk:
        for _ in range(2):
            raw = await sdk.chat.completions.with_raw_response.create(**ask("제 번호 010-1234-5678 기억해 줘"))
            assert raw.headers["x-changjak-cache"] == "miss"
            assert "010-1234-5678" in raw.parse().choices[0].message.content  # handed back, fresh each time


async def test_two_gateways_on_one_redis_share_entries_and_invalidation(make_settings, redis_url: str) -> None:
    settings = make_settings(api_keys=KEY, redis_url=redis_url, redis_prefix=f"test:{uuid.uuid4().hex}")
    fakes = [FakeBackend(MODEL), FakeBackend(MODEL)]
    apps = [create_app(settings, fake) for fake in fakes]
    async with serving(apps[0]) as one, serving(apps[1]) as two:
        await one.chat.completions.create(**ask())
        hit = await two.chat.completions.with_raw_response.create(**ask())
        assert hit.headers["x-changjak-cache"] == "hit" and fakes[1].seen == []
        await apps[0].state.cache.invalidate()  # a promote on replica one
        after = await two.chat.completions.with_raw_response.create(**ask())
        assert after.headers["x-changjak-cache"] == "miss"
        client = apps[0].state.cache.backend.client
        keys = [key async for key in client.scan_iter(f"{settings.redis_prefix}:*")]
        assert keys and not any("비" in key.decode() for key in keys)
        for key in keys:
            await client.delete(key)


def test_keys_are_those_of_earlier_releases() -> None:
    """Entries already in a shared Redis stay readable: the key is the SHA-256 of the same material as before."""
    import hashlib
    from dataclasses import asdict

    cache = ResponseCache(MemoryCache(), ttl_s=60)
    params = GenerationParams(max_tokens=7, temperature=0.0, stop=["끝"], seed=3)
    messages = [ChatMessage(role="user", content=" 비 내리는 골목 ")]
    sampling = asdict(params)
    del sampling["whole"]  # added later, and how the answer travels: never part of the key
    del sampling["min_tokens"]  # added later: part of the key only when set
    material = {"tenant": "acme", "model": MODEL, "version": "4", "prompt": None, "params": sampling,
                "messages": [["user", "비 내리는 골목", None]]}
    expected = hashlib.sha256(json.dumps(material, ensure_ascii=False, sort_keys=True).encode()).hexdigest()
    assert cache.key("acme", MODEL, "4", None, params, messages) == f"changjak:resp:{expected}"
    whole = GenerationParams(max_tokens=7, temperature=0.0, stop=["끝"], seed=3, whole=True)
    assert cache.key("acme", MODEL, "4", None, whole, messages) == f"changjak:resp:{expected}"  # streamed or not
    longer = GenerationParams(max_tokens=7, min_tokens=7, temperature=0.0, stop=["끝"], seed=3)
    assert cache.key("acme", MODEL, "4", None, longer, messages) != f"changjak:resp:{expected}"  # another answer
