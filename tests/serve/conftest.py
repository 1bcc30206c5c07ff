"""The server under test, driven in-process with the official ``openai`` SDK.

``httpx.ASGITransport`` does not run the lifespan, so :func:`serving` enters it. It also buffers a
whole response before returning it, so tests that need a stream to arrive piece by piece (and a
client that hangs up) use :class:`StreamingASGITransport`, which behaves like uvicorn: it hands
each body part over as the app sends it and tells the app ``http.disconnect`` when the client
closes the response.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import FastAPI

from changjak.backends.inference.fake import FakeBackend
from changjak.serve.app import create_app
from changjak.settings import Settings
from tests.backends.inference.conftest import build_lora_adapter

KEY = "cj-test-key-0123456789"
MODEL = "changjak-writer"
MAX_TOKENS_LIMIT = 64


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for tests that start a real server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def serve_settings(make_settings) -> Settings:
    return make_settings(api_keys=KEY, serve={"max_tokens_limit": MAX_TOKENS_LIMIT, "default_max_tokens": 32})


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend(MODEL)


@pytest.fixture
def app(serve_settings: Settings, fake: FakeBackend) -> FastAPI:
    return create_app(serve_settings, fake)


@asynccontextmanager
async def serving(app: FastAPI, *, api_key: str = KEY,
                  transport: httpx.AsyncBaseTransport | None = None) -> AsyncIterator[openai.AsyncOpenAI]:
    """The app's lifespan running, and an SDK client talking to it in-process (no retries)."""
    async with app.router.lifespan_context(app):
        transport = transport or httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield openai.AsyncOpenAI(base_url="http://testserver/v1", api_key=api_key, http_client=http,
                                     max_retries=0)


@pytest.fixture
async def sdk(app: FastAPI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with serving(app) as client:
        yield client


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client (with the API key) for what the SDK hides: raw bodies, headers, SSE."""
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver",
                               headers={"Authorization": f"Bearer {KEY}"})
    async with app.router.lifespan_context(app), client:
        yield client


@pytest.fixture
def admin(http: httpx.AsyncClient) -> httpx.AsyncClient:
    """The bootstrap key's client (an admin of every tenant), for admin and multi-tenant tests."""
    return http


@pytest.fixture(scope="session")
def lora_adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("serve-lora"))


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """An ASGI transport that streams response bodies and reports the client hanging up."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        parts: asyncio.Queue[bytes | None] = asyncio.Queue()
        started, disconnected = asyncio.Event(), asyncio.Event()
        response: dict = {}
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
                 "headers": [(k.lower(), v) for k, v in request.headers.raw], "scheme": "http",
                 "path": request.url.path, "raw_path": request.url.raw_path, "query_string": request.url.query,
                 "server": ("testserver", 80), "client": ("127.0.0.1", 1234), "root_path": ""}
        received = False

        async def receive() -> dict:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                response.update(status=message["status"], headers=message.get("headers", []))
                started.set()
            elif message["type"] == "http.response.body":
                parts.put_nowait(message.get("body", b""))
                if not message.get("more_body", False):
                    parts.put_nowait(None)

        def ended(_: asyncio.Task) -> None:  # an app that fails must not leave the client waiting
            started.set()
            parts.put_nowait(None)

        task = asyncio.create_task(self.app(scope, receive, send))
        task.add_done_callback(ended)
        await started.wait()
        if "status" not in response:
            task.result()  # the app failed before answering: raise its error here
        return httpx.Response(response["status"], headers=response["headers"],
                              stream=_LiveStream(parts, disconnected, task))


class _LiveStream(httpx.AsyncByteStream):
    def __init__(self, parts: asyncio.Queue, disconnected: asyncio.Event, task: asyncio.Task) -> None:
        self.parts, self.disconnected, self.task = parts, disconnected, task

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (part := await self.parts.get()) is not None:
            yield part

    async def aclose(self) -> None:
        self.disconnected.set()
        await asyncio.wait_for(self.task, timeout=5)
