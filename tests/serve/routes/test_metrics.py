"""GET /metrics through the app: what requests, streams and refusals leave in it, and who may read it."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from changjak.backends.inference.fake import FakeBackend
from changjak.serve.app import create_app
from tests.serve.conftest import KEY, MODEL, serving

pytestmark = pytest.mark.anyio
ASK = {"model": MODEL, "messages": [{"role": "user", "content": "비 내리는 골목"}]}


def samples(text: str, name: str, **labels: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def test_chat_requests_streams_and_refusals_show_up(serve_settings) -> None:
    app = create_app(serve_settings, FakeBackend(MODEL), model_version="4")
    async with serving(app) as sdk:
        http = sdk._client
        await sdk.chat.completions.create(**ASK)
        stream = await sdk.chat.completions.create(**ASK, stream=True)
        async for _ in stream:
            pass
        assert (await http.get("http://testserver/v1/models")).status_code == 401
        assert (await http.get("http://testserver/v1/no-such-route")).status_code == 404
        response = await http.get("http://testserver/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    chat = {"route": "/v1/chat/completions", "method": "POST", "status": "200", "model_version": "4", "tenant": "*"}
    assert samples(text, "changjak_requests_total", **chat) == 2
    assert samples(text, "changjak_requests_total", route="/v1/models", status="401", tenant="-") == 1
    assert samples(text, "changjak_requests_total", route="unmatched", status="404") == 1
    assert samples(text, "changjak_request_duration_seconds_count", route="/v1/chat/completions") == 2
    assert samples(text, "changjak_time_to_first_token_seconds_count", model_version="4") == 2
    assert samples(text, "changjak_inter_token_latency_seconds_count", model_version="4") > 0
    n = len("비 내리는 골목")
    assert samples(text, "changjak_prompt_tokens_total", tenant="*") > 2 * n  # the system prompt counts too
    assert samples(text, "changjak_completion_tokens_total", tenant="*", model_version="4") == 2 * n
    assert samples(text, "changjak_requests_in_flight") == 1  # this scrape itself
    assert samples(text, "changjak_generations_running") == 0


async def test_private_metrics_need_the_metrics_read_scope(make_settings) -> None:
    app = create_app(make_settings(api_keys=KEY, auth={"metrics_public": False}), FakeBackend(MODEL))
    async with app.router.lifespan_context(app), \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        anonymous = await http.get("/metrics")
        admin = {"Authorization": f"Bearer {KEY}"}
        made = await http.post("/admin/keys", headers=admin, json={"name": "app", "role": "user", "tenant": "acme"})
        user = await http.get("/metrics", headers={"Authorization": f"Bearer {made.json()['key']}"})
        allowed = await http.get("/metrics", headers=admin)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error"
    assert user.status_code == 403 and user.json()["error"]["code"] == "missing_scope"
    assert allowed.status_code == 200 and "changjak_requests_total" in allowed.text
