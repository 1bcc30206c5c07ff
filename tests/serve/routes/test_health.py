"""/healthz says the process is up; /readyz says 200 only once the model is loaded and answers."""

from __future__ import annotations

import httpx
import pytest

from changjak.backends.inference.fake import FakeBackend
from changjak.serve.app import create_app
from tests.serve.conftest import MODEL

pytestmark = pytest.mark.anyio


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def test_probes_need_no_key_and_readiness_waits_for_the_model(app) -> None:
    async with client(app) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        before = await http.get("/readyz")  # the lifespan has not loaded the model yet
        async with app.router.lifespan_context(app):
            during = await http.get("/readyz")
        after = await http.get("/readyz")
    assert before.status_code == 503 and before.json()["error"]["code"] == "model_not_ready"
    assert during.status_code == 200 and during.json() == {"status": "ready", "model": MODEL, "version": None}
    assert after.status_code == 503


async def test_a_loaded_backend_that_does_not_answer_is_not_ready(serve_settings) -> None:
    app = create_app(serve_settings, FakeBackend(MODEL, is_ready=False))
    async with app.router.lifespan_context(app), client(app) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"] == {"message": "The model backend is not answering.",
                                        "type": "service_unavailable", "param": None, "code": "backend_not_ready"}


async def test_chat_before_the_model_is_loaded_is_a_503(app) -> None:
    async with client(app) as http:
        response = await http.post("/v1/chat/completions", headers={"Authorization": "Bearer cj-test-key-0123456789"},
                                   json={"model": MODEL, "messages": [{"role": "user", "content": "안녕"}]})
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "service_unavailable"


class CountingBackend(FakeBackend):
    """A fake that counts generations and can be made to fail or hang."""

    def __init__(self, *args, hang: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.generations, self.hang = 0, hang

    async def generate(self, messages, params):
        self.generations += 1
        if self.hang:
            import asyncio

            await asyncio.sleep(30)
        async for chunk in super().generate(messages, params):
            yield chunk


async def test_readiness_asks_for_one_token_and_reuses_the_answer(make_settings) -> None:
    backend = CountingBackend(MODEL)
    app = create_app(make_settings(serve={"ready_probe_ttl_s": 60}), backend)
    async with app.router.lifespan_context(app), client(app) as http:
        answers = [(await http.get("/readyz")).status_code for _ in range(3)]
    assert answers == [200, 200, 200] and backend.generations == 1


async def test_a_backend_that_fails_or_hangs_is_not_ready(make_settings) -> None:
    settings = make_settings(serve={"ready_probe_ttl_s": 0, "ready_probe_timeout_s": 0.2})
    failing = create_app(settings, CountingBackend(MODEL, fail_after=0))
    hanging = create_app(settings, CountingBackend(MODEL, hang=True))
    codes = []
    for app in (failing, hanging):
        async with app.router.lifespan_context(app), client(app) as http:
            response = await http.get("/readyz")
            codes.append((response.status_code, response.json()["error"]["code"]))
    assert codes == [(503, "backend_error"), (503, "backend_timeout")]


async def test_a_recent_real_generation_spares_the_probe(make_settings) -> None:
    backend = CountingBackend(MODEL)
    app = create_app(make_settings(api_keys="k" * 20, serve={"ready_probe_ttl_s": 60}), backend)
    async with app.router.lifespan_context(app), client(app) as http:
        chat = await http.post("/v1/chat/completions", headers={"Authorization": "Bearer " + "k" * 20},
                               json={"model": MODEL, "messages": [{"role": "user", "content": "안녕"}]})
        ready = await http.get("/readyz")
    assert chat.status_code == 200 and ready.status_code == 200 and backend.generations == 1


async def test_draining_is_not_ready_at_once(app) -> None:
    async with app.router.lifespan_context(app), client(app) as http:
        assert (await http.get("/readyz")).status_code == 200
        app.state.lifecycle.drain()
        response = await http.get("/readyz")
        alive = await http.get("/healthz")
    assert response.status_code == 503 and response.json()["error"]["code"] == "draining"
    assert alive.status_code == 200
