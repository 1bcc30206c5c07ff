"""The ``openai`` backend against the in-process stand-in server (httpx ASGITransport, and a
streaming transport where a client hanging up must reach the server)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from changjak.backends import inference
from changjak.backends.inference.base import GenerationParams
from changjak.backends.inference.openai_upstream import OpenAIUpstreamBackend
from changjak.errors import BackendError
from tests.backends.inference.contract import BackendContract
from tests.backends.inference.standin import create_standin
from tests.backends.inference.test_upstream_http import serve
from tests.serve.conftest import StreamingASGITransport

pytestmark = pytest.mark.anyio
ASK = [{"role": "user", "content": "비 내리는 골목"}]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def upstream(app, **kwargs) -> OpenAIUpstreamBackend:
    return OpenAIUpstreamBackend("http://upstream/v1", model_id="changjak-writer", transport=httpx.ASGITransport(app),
                                 **kwargs)


async def collect(backend, **params):
    return [c async for c in backend.generate(ASK, GenerationParams(**params))]


class TestOpenAIUpstreamContract(BackendContract):
    """The shared backend contract, with the stand-in (the fake behind OpenAI's wire format) upstream."""

    adapters = ("poet", "critic")

    @pytest.fixture
    def backend(self) -> OpenAIUpstreamBackend:
        return upstream(create_standin(model="changjak-writer", adapters={"poet": "바다는 조용했고 별은 멀었다",
                                                                          "critic": "이 장면은 너무 길다, 줄이자"}))


async def test_streams_text_then_finish_and_usage() -> None:
    app = create_standin()
    backend = upstream(app, api_key="sk-upstream", upstream_model="served-name")
    chunks = await collect(backend, max_tokens=100, temperature=0.0, top_p=0.9, seed=7)
    assert "".join(c.text for c in chunks) == "비 내리는 골목"
    last = chunks[-1]
    assert (last.text, last.finish_reason) == ("", "stop")
    assert (last.prompt_tokens, last.completion_tokens) == (len("비 내리는 골목"), len("비 내리는 골목"))
    sent = app.state.log[-1]
    assert sent["model"] == "served-name" and sent["stream"] is True
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["seed"]) == (100, 0.0, 0.9, 7)
    assert "stop" not in sent
    await backend.aclose()


async def test_max_tokens_and_stop_map_to_finish_reasons() -> None:
    backend = upstream(create_standin())
    chunks = await collect(backend, max_tokens=3)
    assert "".join(c.text for c in chunks) == "비 내" and chunks[-1].finish_reason == "length"
    chunks = await collect(backend, stop=["골"])
    assert "".join(c.text for c in chunks) == "비 내리는 " and chunks[-1].finish_reason == "stop"
    await backend.aclose()


async def test_upstream_error_status_is_a_backend_error() -> None:
    backend = upstream(create_standin(status=500))
    with pytest.raises(BackendError, match="answered 500: stand-in refuses"):
        await collect(backend)


async def test_failure_mid_stream_is_a_backend_error() -> None:
    backend = upstream(create_standin(fail_after=2))
    got = []
    with pytest.raises(BackendError, match="mid-stream"):
        async for chunk in backend.generate(ASK, GenerationParams()):
            got.append(chunk.text)
    assert got == ["비", " "]


async def test_unreachable_upstream_is_a_backend_error_and_not_ready() -> None:
    backend = OpenAIUpstreamBackend("http://127.0.0.1:9/v1", model_id="m", timeout=1)
    assert not await backend.ready()
    with pytest.raises(BackendError, match="not answering"):
        await collect(backend)
    await backend.aclose()


async def test_ready_when_upstream_lists_models() -> None:
    assert await upstream(create_standin()).ready()


async def test_closing_the_stream_cancels_upstream() -> None:
    app = create_standin(reply="가" * 200, delay=0.01)
    backend = OpenAIUpstreamBackend("http://upstream/v1", model_id="m", transport=StreamingASGITransport(app))
    stream = backend.generate(ASK, GenerationParams(max_tokens=200))
    assert (await anext(stream)).text == "가"
    await stream.aclose()
    for _ in range(100):
        if app.state.cancelled:
            break
        await asyncio.sleep(0.01)
    assert app.state.cancelled == 1
    await backend.aclose()


def test_registered_by_name_and_needs_an_address() -> None:
    assert "openai" in inference.BACKENDS
    with pytest.raises(BackendError, match="upstream server's address"):
        inference.create("openai", model_id="m")
    backend = inference.create("openai", model_id="m", base_url="http://x/v1")
    assert isinstance(backend, OpenAIUpstreamBackend) and backend.upstream_model == "m"


# Through the gateway: the served backend is the upstream one.

@pytest.fixture
def serve_settings(make_settings):
    from tests.serve.conftest import KEY

    return make_settings(api_keys=KEY)


async def gateway_stream(serve_settings, standin, *, hang_up_after: int | None = None) -> list[str]:
    from changjak.serve.app import create_app
    from tests.serve.conftest import KEY

    backend = OpenAIUpstreamBackend("http://upstream/v1", model_id="changjak-writer",
                                    transport=StreamingASGITransport(standin))
    app = create_app(serve_settings, backend)
    events: list[str] = []
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=StreamingASGITransport(app), base_url="http://testserver",
            headers={"Authorization": f"Bearer {KEY}"}) as http:
        body = {"model": "changjak-writer", "messages": ASK, "stream": True}
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    events.append(line)
                    if hang_up_after is not None and len(events) == hang_up_after:
                        break
    await backend.aclose()
    return events


async def test_the_gateway_ends_a_failing_upstream_stream_with_an_error_then_done(serve_settings) -> None:
    events = await gateway_stream(serve_settings, create_standin(fail_after=3))
    assert events[-1] == "data: [DONE]" and '"error"' in events[-2]


async def test_hanging_up_on_the_gateway_cancels_the_upstream_generation(serve_settings) -> None:
    standin = create_standin(reply="가" * 300, delay=0.01)
    events = await gateway_stream(serve_settings, standin, hang_up_after=3)
    for _ in range(200):
        if standin.state.cancelled:
            break
        await asyncio.sleep(0.01)
    assert len(events) == 3 and standin.state.cancelled == 1


@pytest.mark.anyio
@pytest.mark.parametrize("fast", [True, False], ids=["own-client", "httpx"])
async def test_a_whole_answer_is_one_non_streamed_request(fast: bool) -> None:
    app = create_standin(reply="바다는 조용했고 별은 멀었다")
    seen: list[dict] = []

    async def recording(scope, receive, send):  # what the upstream was sent
        if scope["type"] != "http" or not scope["path"].endswith("/chat/completions"):
            return await app(scope, receive, send)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.append(json.loads(body))
        replayed = [{"type": "http.request", "body": body}]

        async def replay():  # the body again, for the stand-in, then whatever the client does
            return replayed.pop() if replayed else await receive()

        return await app(scope, replay, send)

    server = task = None
    if fast:  # the keep-alive client, against a real server on a port
        url, server, task = await serve(recording)
        backend = OpenAIUpstreamBackend(url, model_id="changjak-writer")
        assert backend.fast is not None
    else:
        backend = upstream(recording)
    try:
        whole = [c async for c in backend.generate(ASK, GenerationParams(max_tokens=64, whole=True))]
        streamed = [c async for c in backend.generate(ASK, GenerationParams(max_tokens=64))]
        cut = [c async for c in backend.generate(ASK, GenerationParams(max_tokens=3, whole=True))]
    finally:
        await backend.aclose()
        if server is not None:
            server.should_exit = True
            await task
    assert "stream" not in seen[0] and seen[1]["stream"] is True
    assert [c.text for c in whole[:-1]] == ["바다는 조용했고 별은 멀었다"]
    assert "".join(c.text for c in streamed) == "바다는 조용했고 별은 멀었다"
    last = whole[-1]
    assert (last.finish_reason, last.completion_tokens) == ("stop", streamed[-1].completion_tokens)
    assert last.prompt_tokens == streamed[-1].prompt_tokens > 0
    assert cut[-1].finish_reason == "length"


def test_min_tokens_goes_upstream_only_when_asked_for() -> None:
    backend = OpenAIUpstreamBackend("http://127.0.0.1:9/v1", model_id="changjak-writer")
    assert "min_tokens" not in backend.request_body(ASK, GenerationParams(max_tokens=8))  # OpenAI's API refuses it
    assert backend.request_body(ASK, GenerationParams(max_tokens=8, min_tokens=8))["min_tokens"] == 8
