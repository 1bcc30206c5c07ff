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
