"""The ``openai`` backend's own HTTP/1.1 client, against real sockets: the stand-in under uvicorn, and
raw asyncio servers for what a well-behaved server never does (hang, close kept-alive connections,
answer without a length)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import uvicorn

from changjak.backends.inference.base import GenerationParams
from changjak.backends.inference.openai_upstream import OpenAIUpstreamBackend
from changjak.backends.inference.upstream_http import UpstreamError, UpstreamHTTP
from changjak.errors import BackendError
from tests.backends.inference.standin import create_standin
from tests.serve.conftest import free_port

pytestmark = pytest.mark.anyio
ASK = [{"role": "user", "content": "비 내리는 골목"}]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def serve(app) -> tuple[str, uvicorn.Server, asyncio.Task]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return f"http://127.0.0.1:{port}/v1", server, task


@pytest.fixture
async def standin_url() -> AsyncIterator[tuple[str, object]]:
    app = create_standin(model="changjak-writer", reply="가" * 50, delay=0.002)
    url, server, task = await serve(app)
    yield url, app
    server.should_exit = True
    await task


async def raw_server(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]):
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")),
                  0)
    return head + await reader.readexactly(length)


async def collect(backend, **params):
    return [c async for c in backend.generate(ASK, GenerationParams(**params))]


async def test_streams_the_reply_and_keeps_the_connection(standin_url) -> None:
    url, app = standin_url
    backend = OpenAIUpstreamBackend(url, model_id="changjak-writer")
    assert backend.fast is not None  # plain http, no proxy: the light client
    for _ in range(3):
        chunks = await collect(backend, max_tokens=8)
        assert "".join(c.text for c in chunks) == "가" * 8
        assert chunks[-1].finish_reason == "length" and chunks[-1].completion_tokens == 8
    assert len(backend.fast._idle) == 1  # one connection served all three
    assert [body["max_tokens"] for body in app.state.log] == [8, 8, 8] and app.state.log[0]["stream"] is True
    await backend.aclose()


async def test_closing_the_stream_closes_the_connection_and_cancels_upstream(standin_url) -> None:
    url, app = standin_url
    backend = OpenAIUpstreamBackend(url, model_id="m")
    stream = backend.generate(ASK, GenerationParams(max_tokens=50))
    assert (await anext(stream)).text == "가"
    await stream.aclose()
    for _ in range(200):
        if app.state.cancelled:
            break
        await asyncio.sleep(0.01)
    assert app.state.cancelled == 1 and backend.fast._idle == []
    await backend.aclose()


@pytest.mark.parametrize(("standin", "error"), [({"status": 503}, "answered 503: stand-in refuses"),
                                                ({"fail_after": 2}, "failed mid-stream")])
async def test_error_status_and_mid_stream_failure_are_backend_errors(standin: dict, error: str) -> None:
    url, server, task = await serve(create_standin(**standin))
    backend = OpenAIUpstreamBackend(url, model_id="m")
    with pytest.raises(BackendError, match=error):
        await collect(backend)
    server.should_exit = True
    await task
    await backend.aclose()


async def test_a_server_that_never_answers_times_out() -> None:
    async def hang(reader, writer):
        await read_request(reader)
        await asyncio.sleep(5)
        writer.close()

    server, url = await raw_server(hang)
    backend = OpenAIUpstreamBackend(url, model_id="m", timeout=0.2)
    with pytest.raises(BackendError, match=r"not answering \(ReadTimeout\)"):
        await collect(backend)
    await backend.aclose()
    server.close()


async def test_refused_connection_is_a_backend_error() -> None:
    backend = OpenAIUpstreamBackend(f"http://127.0.0.1:{free_port()}/v1", model_id="m", timeout=1)
    with pytest.raises(BackendError, match="not answering .ConnectError"):
        await collect(backend)
    await backend.aclose()


SSE = (b'data: {"choices": [{"delta": {"content": "hi"}, "finish_reason": null}]}\n\n'
       b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, '
       b'"completion_tokens": 1}}\n\ndata: [DONE]\n\n')


async def test_a_kept_alive_connection_closed_by_the_server_is_retried() -> None:
    served = 0

    async def once_then_close(reader, writer):  # answers one request per connection, then hangs up
        nonlocal served
        await read_request(reader)
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n" % len(SSE)
                     + SSE)
        await writer.drain()
        writer.close()

    server, url = await raw_server(once_then_close)
    backend = OpenAIUpstreamBackend(url, model_id="m")
    for _ in range(3):
        chunks = await collect(backend)
        assert [c.text for c in chunks] == ["hi", ""] and chunks[-1].prompt_tokens == 3
    assert served == 3
    await backend.aclose()
    server.close()


async def test_bodies_ended_by_eof_and_split_lines() -> None:
    async def no_length(reader, writer):  # no Content-Length, no chunking: the body ends with the connection
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        for i in range(0, len(SSE), 7):  # lines split across packets, multi-byte text too
            writer.write(SSE[i:i + 7])
            await writer.drain()
        writer.close()

    server, url = await raw_server(no_length)
    backend = OpenAIUpstreamBackend(url, model_id="m")
    chunks = await collect(backend)
    assert [c.text for c in chunks] == ["hi", ""] and chunks[-1].finish_reason == "stop"
    assert backend.fast._idle == []  # an EOF-ended body leaves nothing to reuse
    await backend.aclose()
    server.close()


async def test_garbage_is_a_protocol_error() -> None:
    async def garbage(reader, writer):
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        writer.close()

    server, url = await raw_server(garbage)
    client = UpstreamHTTP(url)
    with pytest.raises(UpstreamError, match="RemoteProtocolError"):
        async with client.stream("/chat/completions", b"{}"):
            pass
    await client.aclose()
    server.close()


def test_https_proxies_and_transports_stay_on_httpx(monkeypatch) -> None:
    assert OpenAIUpstreamBackend("https://api.example/v1", model_id="m").fast is None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert OpenAIUpstreamBackend("http://vllm:8000/v1", model_id="m").fast is None
    monkeypatch.setenv("NO_PROXY", "vllm")
    assert OpenAIUpstreamBackend("http://vllm:8000/v1", model_id="m").fast is not None
