"""The metered backend: times the stream at the backend boundary, fills the request's context,
and closes the inner generation when its reader goes away."""

from __future__ import annotations

import pytest

from changjak.backends.inference.base import GenerationParams
from changjak.backends.inference.fake import FakeBackend
from changjak.monitor.backend import MeteredBackend
from changjak.monitor.metrics import Metrics
from changjak.serve import logging as request_logs
from changjak.serve.context import RequestContext
from tests.monitor.test_metrics import value

pytestmark = pytest.mark.anyio
ASK = [{"role": "user", "content": "안녕하세요"}]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_ttft_inter_token_latency_and_tokens_into_the_context() -> None:
    metrics = Metrics()
    backend = MeteredBackend(FakeBackend("m", delay=0.002), metrics, model_version="3")
    ctx = RequestContext(request_id="r")
    token = request_logs.bind(ctx)
    try:
        chunks = [c async for c in backend.generate(ASK, GenerationParams())]
    finally:
        request_logs.unbind(token)
    assert "".join(c.text for c in chunks) == "안녕하세요"
    assert value(metrics, "changjak_time_to_first_token_seconds_count", model_version="3") == 1
    assert value(metrics, "changjak_inter_token_latency_seconds_count", model_version="3") == 4
    assert value(metrics, "changjak_inter_token_latency_seconds_sum", model_version="3") >= 4 * 0.002
    assert (ctx.prompt_tokens, ctx.completion_tokens, ctx.model_version) == (5, 5, "3")
    assert value(metrics, "changjak_generations_running") == 0 == value(metrics, "changjak_generations_queued")


async def test_gauges_while_queued_then_running_and_closing_stops_the_inner_generation() -> None:
    metrics = Metrics()
    fake = FakeBackend("m", reply="가" * 50, delay=0.001)
    backend = MeteredBackend(fake, metrics)
    stream = backend.generate(ASK, GenerationParams())
    first = await anext(stream)
    assert first.text == "가" and fake.running
    assert value(metrics, "changjak_generations_running") == 1
    await stream.aclose()
    assert not fake.running and fake.emitted < 50
    assert value(metrics, "changjak_generations_running") == 0


async def test_it_passes_everything_else_through() -> None:
    fake = FakeBackend("m", is_ready=False)
    backend = MeteredBackend(fake, Metrics())
    assert backend.model_id == "m" and not await backend.ready() and backend.reply is None
    await backend.aclose()
    assert fake.closed
