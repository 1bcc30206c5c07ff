"""API keys: Bearer auth on /v1, hashed once, compared in constant time, never logged or echoed."""

from __future__ import annotations

import logging

import httpx
import openai
import pytest
from pydantic import SecretStr

from changjak.backends.inference.fake import FakeBackend
from changjak.serve.app import create_app
from changjak.serve.auth import KeyRing
from tests.serve.conftest import KEY, MODEL, serving

pytestmark = pytest.mark.anyio
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "안녕"}]}


async def test_a_wrong_key_is_a_401_that_never_echoes_it(app, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(app, api_key="sk-wrong-secret-4242") as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.chat.completions.create(**CHAT)
    assert (caught.value.status_code, caught.value.code) == (401, "invalid_api_key")
    assert caught.value.type == "authentication_error"
    assert "4242" not in caught.value.response.text
    assert "4242" not in caplog.text


async def test_a_missing_key_is_a_401_saying_how_to_send_one(app) -> None:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    async with app.router.lifespan_context(app), http:
        missing = await http.post("/v1/chat/completions", json=CHAT)
        not_bearer = await http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Basic {KEY}"})
    for response in (missing, not_bearer):
        assert response.status_code == 401
        assert "Authorization: Bearer" in response.json()["error"]["message"]


async def test_any_of_several_configured_keys_is_accepted(make_settings) -> None:
    app = create_app(make_settings(api_keys="first-key, second-key"), FakeBackend(MODEL))
    for key in ("first-key", "second-key"):
        async with serving(app, api_key=key) as sdk:
            assert (await sdk.chat.completions.create(**CHAT)).choices[0].message.content == "안녕"


async def test_with_no_keys_configured_every_request_is_refused(make_settings) -> None:
    app = create_app(make_settings(), FakeBackend(MODEL))
    async with serving(app, api_key="anything") as sdk:
        with pytest.raises(openai.AuthenticationError, match="set CHANGJAK_API_KEYS"):
            await sdk.chat.completions.create(**CHAT)


def test_the_key_ring_keeps_hashes_only() -> None:
    ring = KeyRing([SecretStr("alpha-key"), SecretStr("beta-key")])
    assert len(ring) == 2
    assert "alpha-key" not in repr(vars(ring))
    assert ring.identify("alpha-key") != ring.identify("beta-key")
    assert ring.identify("alpha-key") is not None
    assert ring.identify("gamma-key") is None
    assert len(KeyRing([])) == 0
