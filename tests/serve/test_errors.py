"""One handler, one shape: every error is {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import httpx
import pytest

from changjak.errors import RateLimited
from changjak.serve.app import create_app
from tests.serve.conftest import KEY, MODEL

pytestmark = pytest.mark.anyio


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


async def test_an_unknown_route_is_a_404_in_the_openai_shape(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/completions-that-do-not-exist", json={})
    assert response.status_code == 404
    error = error_of(response)
    assert error["type"] == "not_found_error"
    assert "/v1/completions-that-do-not-exist" in error["message"]


async def test_a_wrong_method_is_a_405_in_the_openai_shape(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/chat/completions")
    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"


async def test_a_body_that_is_not_json_is_a_400(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/chat/completions", content=b"{not json",
                               headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_json"


async def test_a_missing_field_is_a_400_naming_it_without_echoing_values(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "비밀"}]})
    assert response.status_code == 400
    error = error_of(response)
    assert (error["param"], error["code"]) == ("model", "missing_required_parameter")
    assert "비밀" not in response.text


async def test_a_rate_limit_carries_retry_after(serve_settings, fake) -> None:
    app = create_app(serve_settings, fake)

    @app.get("/v1/limited")
    async def limited() -> None:
        raise RateLimited("Slow down.", retry_after=1.2)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver",
                                 headers={"Authorization": f"Bearer {KEY}"}) as http:
        response = await http.get("/v1/limited")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    assert error_of(response)["type"] == "rate_limit_error"


async def test_an_unexpected_error_is_a_generic_500(serve_settings, fake) -> None:
    app = create_app(serve_settings, fake)

    @app.get("/v1/broken")
    async def broken() -> None:
        raise RuntimeError(f"database password is hunter2 for {MODEL}")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        response = await http.get("/v1/broken")
    assert response.status_code == 500
    assert error_of(response)["type"] == "server_error"
    assert "hunter2" not in response.text and "Traceback" not in response.text
