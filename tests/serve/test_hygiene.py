"""Bad inputs: every one is a 400 or 413 in the OpenAI shape naming what is wrong, never a 500.

Tried: bodies over the size limit with and without Content-Length (chunked), NUL bytes, lone
surrogates (JSON-escaped) and invalid UTF-8, too many or too long stop strings, too many messages,
too long a prompt, huge n and max_tokens, non-JSON and non-object bodies; unknown fields pass.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from changjak.backends.inference.fake import FakeBackend
from changjak.serve.app import create_app
from tests.serve.conftest import KEY, MODEL, serving

pytestmark = pytest.mark.anyio
LIMIT = 4096


@pytest.fixture
def app(make_settings):
    settings = make_settings(api_keys=KEY, serve={"max_tokens_limit": 64, "default_max_tokens": 32},
                             limits={"max_body_bytes": LIMIT, "max_messages": 4, "max_prompt_chars": 200,
                                     "max_stop_chars": 8})
    return create_app(settings, FakeBackend(MODEL))


@pytest.fixture
async def http(app):
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver",
                               headers={"Authorization": f"Bearer {KEY}"})
    async with app.router.lifespan_context(app), client:
        yield client


def ask(content: str = "안녕", **kw) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **kw}


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


async def test_a_body_over_the_limit_with_content_length_is_413(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/chat/completions", json=ask("가" * LIMIT))
    error = error_of(response, 413)
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
    assert str(LIMIT) in error["message"]


async def test_a_chunked_body_is_counted_as_it_arrives_and_the_rest_never_read(http: httpx.AsyncClient) -> None:
    sent = 0

    async def chunks():
        nonlocal sent
        yield b'{"model": "changjak-writer", "messages": [{"role": "user", "content": "'
        for _ in range(1000):
            sent += 1
            yield b"a" * 1024
        yield b'"}]}'

    response = await http.post("/v1/chat/completions", content=chunks())
    assert "content-length" not in response.request.headers  # chunked, as a client streaming its body
    assert error_of(response, 413)["code"] == "request_too_large"
    assert sent <= LIMIT // 1024 + 1


async def test_a_body_within_the_limit_passes_however_it_arrives(http: httpx.AsyncClient) -> None:
    async def chunks():
        body = json.dumps(ask("짧은 시")).encode()
        yield body[:10]
        yield body[10:]

    response = await http.post("/v1/chat/completions", content=chunks(),
                               headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "짧은 시"


@pytest.mark.parametrize(("fields", "param"), [
    (ask("a\x00b"), "messages[0].content"),
    (ask(model=f"{MODEL}\x00"), "model"),
    (ask(user="u\x00"), "user"),
    (ask(stop=["끝", "\x00"]), "stop[1]"),
    (ask(stop=["a", "b", "c", "d", "e"]), "stop"),
    (ask(stop=["아주아주아주긴멈춤말"]), "stop[0]"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}] * 5}, "messages"),
    (ask("가" * 201), "messages"),
    (ask(n=10**30), "n"),
    (ask(n=0), "n"),
    (ask(max_tokens=10**30), "max_tokens"),
    (ask(seed=2**64), "seed"),
    (ask(max_tokens=4, extra_body={"min_tokens": 5}), "min_tokens"),
    (ask(extra_body={"min_tokens": -1}), "min_tokens"),
])
async def test_bad_values_are_400s_naming_the_parameter(app, fields: dict, param: str) -> None:
    async with serving(app) as sdk:
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.chat.completions.create(**fields)
    assert caught.value.param == param and caught.value.type == "invalid_request_error"


@pytest.mark.parametrize(("raw", "param"), [
    (b'{"model": "changjak-writer", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
     "messages[0].content"),
    (b'{"model": "changjak-writer", "messages": [{"role": "user", "content": "\\udfff"}]}',
     "messages[0].content"),
    (b'{"model": "changjak-writer", "messages": [{"role": "user", "content": "\xff\xfe"}]}', None),
    (b'{"model": "changjak-writer", "messages": [{"role": "user", "content": "a\\u0000"}]}',
     "messages[0].content"),
    (b'{"model": "changjak-writer", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
     "temperature"),
    (b"[1, 2, 3]", None),
    (b'{"model": "changjak-writer", "messages": 1.5}', "messages"),
    (b"not json", None),
    (b"", None),
])
async def test_malformed_bodies_are_400s_never_500s(http: httpx.AsyncClient, raw: bytes, param: str | None) -> None:
    response = await http.post("/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"})
    error = error_of(response, 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert "\\ud800" not in response.text and "NaN" not in error["message"]


async def test_min_tokens_reaches_the_model_and_is_part_of_the_cache_key(make_settings) -> None:
    fake = FakeBackend(MODEL)
    app = create_app(make_settings(api_keys=KEY), fake)
    async with serving(app) as sdk:
        await sdk.chat.completions.create(**ask(max_tokens=16, temperature=0), extra_body={"min_tokens": 16})
        assert fake.params.min_tokens == 16
        plain = await sdk.chat.completions.with_raw_response.create(**ask(max_tokens=16, temperature=0))
        assert fake.params.min_tokens == 0  # not the answer above, which was asked to run longer
    assert plain.headers["x-changjak-cache"] == "miss"


async def test_unknown_fields_are_accepted(app) -> None:
    async with serving(app) as sdk:
        reply = await sdk.chat.completions.create(**ask(), extra_body={"logit_bias": {"1": 2}, "brand_new": [1]})
    assert reply.choices[0].message.content == "안녕"


async def test_the_sdk_sees_a_413_in_the_openai_shape(app) -> None:
    async with serving(app) as sdk:
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk.chat.completions.create(**ask("가" * LIMIT))
    assert caught.value.status_code == 413 and caught.value.code == "request_too_large"
