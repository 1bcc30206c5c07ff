"""The ``openai`` backend: the model runs on another server that speaks the OpenAI API (vLLM, or
anything compatible), and the gateway streams from it with httpx.

    CHANGJAK_SERVE__UPSTREAM_URL=http://vllm:8000/v1 changjak serve --backend openai

Each generation is one streamed ``POST {upstream_url}/chat/completions`` with ``max_tokens``,
``temperature``, ``top_p``, ``stop`` and ``seed`` from :class:`GenerationParams` (an ``adapter``
is sent as the model name: vLLM serves each LoRA under its own name). Its ``finish_reason`` and
``usage`` come back on the last chunk. A generation for a whole (non-streamed) answer
(``params.whole``) is one non-streamed request instead, as LiteLLM sends it: the gateway then
parses one JSON body, not an event per token (measured with ``benchmarks/gateway_profile.py``:
1.9-2.0 -> 1.35-1.4 ms of gateway CPU for a short uncached request). Closing the reply's
iterator closes the HTTP stream, and an OpenAI-compatible server stops generating when its
client goes (vLLM aborts the request).
Upstream errors, timeouts and refused connections become :class:`~changjak.errors.BackendError`.

A plain ``http://`` upstream with no proxy in the environment is streamed with the lighter
keep-alive client of :mod:`~changjak.backends.inference.upstream_http` (httpx cost ~3 ms of CPU
a request there); https, proxies and an injected ``transport`` (tests) use httpx. ``ready()``
always asks with httpx.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from changjak.backends.inference.base import FinishReason, GenerationChunk, GenerationParams
from changjak.backends.inference.upstream_http import UpstreamError, UpstreamHTTP
from changjak.errors import BackendError


class OpenAIUpstreamBackend:
    def __init__(self, base_url: str, *, model_id: str, api_key: str | None = None,
                 upstream_model: str | None = None, timeout: float = 60.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model_id = model_id
        self.upstream_model = upstream_model or model_id
        self.client = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, transport=transport,
                                        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)))
        self.fast = (UpstreamHTTP(base_url, headers=headers, timeout=timeout, connect_timeout=min(timeout, 5.0))
                     if transport is None and _plain_http_without_proxy(base_url) else None)

    @classmethod
    def load(cls, base_path: Path | None = None, adapter_dir: Path | None = None, *, device: str = "auto",
             dtype: str = "auto", model_id: str, base_url: str | None = None, api_key: str | None = None,
             upstream_model: str | None = None, timeout: float = 60.0) -> OpenAIUpstreamBackend:
        """Same signature as the other backends plus the upstream's address; loads nothing here."""
        if not base_url:
            raise BackendError("the openai backend needs the upstream server's address",
                               hint="set CHANGJAK_SERVE__UPSTREAM_URL, e.g. http://127.0.0.1:8001/v1")
        return cls(base_url, model_id=model_id, api_key=api_key, upstream_model=upstream_model, timeout=timeout)

    def request_body(self, messages: list[dict], params: GenerationParams) -> dict[str, Any]:
        """The upstream request for ``params``."""
        body: dict[str, Any] = {
            "model": getattr(params, "adapter", None) or self.upstream_model, "messages": messages,
            "max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p}
        if not params.whole:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.min_tokens:  # vLLM's extension: sent only when asked for, as OpenAI's API refuses it
            body["min_tokens"] = params.min_tokens
        return body

    async def generate(self, messages: list[dict], params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        """Stream the upstream's reply; closing this iterator closes the upstream stream."""
        finish: str | None = None
        usage: dict[str, Any] = {}
        pieces = 0
        body = json.dumps(self.request_body(messages, params), ensure_ascii=False).encode()
        try:
            async with self._stream(body) as (status, lines, read_error, read_whole):
                if status >= 400:
                    message = await read_error()
                    if status == 404 and getattr(params, "adapter", None):
                        raise BackendError(f"the upstream server does not serve the adapter {params.adapter!r}",
                                           hint="load it there first (vLLM: --lora-modules NAME=PATH)")
                    raise BackendError(f"the upstream server answered {status}: {message}")
                if params.whole:  # one JSON answer: no event per token to parse, time and pass on
                    text, finish, usage = _whole_answer(json.loads(await read_whole()))
                    if text:
                        pieces += 1
                        yield GenerationChunk(text)
                else:  # events, one per piece of text
                    done = False
                    async for line in lines:
                        if done or not line.startswith("data:"):
                            continue  # after [DONE]: read to the end, so the connection is kept for the next
                        data = line[5:].strip()
                        if data == "[DONE]":
                            done = True
                            continue
                        event = json.loads(data)
                        if "error" in event:
                            raise BackendError(f"the upstream server failed mid-stream: {_message(event)}")
                        for choice in event.get("choices") or ():
                            if text := (choice.get("delta") or {}).get("content"):
                                pieces += 1
                                yield GenerationChunk(text)
                            finish = choice.get("finish_reason") or finish
                        usage = event.get("usage") or usage
        except (httpx.HTTPError, UpstreamError) as e:
            kind = e.kind if isinstance(e, UpstreamError) else e.__class__.__name__
            raise BackendError(f"the upstream server is not answering ({kind})",
                               hint="check settings.serve.upstream_url and that the server is up") from e
        except json.JSONDecodeError as e:
            raise BackendError("the upstream server sent an event that is not JSON") from e
        yield GenerationChunk(finish_reason=_finish_reason(finish), prompt_tokens=usage.get("prompt_tokens") or 0,
                              completion_tokens=usage.get("completion_tokens") or pieces)

    @asynccontextmanager
    async def _stream(self, body: bytes):
        """(status, the body's lines, a coroutine reading an error body's message, one reading the whole
        body) of one POST, read as it arrives."""
        if self.fast is not None:
            async with self.fast.stream("/chat/completions", body) as response:
                async def read_error() -> str:
                    return _error_text(await response.read(), response.reason)

                yield response.status, response.lines(), read_error, response.read
            return
        async with self.client.stream("POST", "/chat/completions", content=body,
                                      headers={"Content-Type": "application/json"}) as response:
            async def read_httpx_error() -> str:
                await response.aread()
                return _error_message(response)

            yield response.status_code, response.aiter_lines(), read_httpx_error, response.aread

    async def ready(self) -> bool:
        """The upstream lists its models (the gateway's /readyz also asks it for one token)."""
        try:
            response = await self.client.get("/models")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        if self.fast is not None:
            await self.fast.aclose()
        await self.client.aclose()


def _whole_answer(answer: Any) -> tuple[str, str | None, dict[str, Any]]:
    """(text, finish_reason, usage) of a non-streamed chat completion."""
    if not isinstance(answer, dict) or "error" in answer:
        raise BackendError(f"the upstream server failed: {_message(answer if isinstance(answer, dict) else {})}")
    choice = (answer.get("choices") or [{}])[0]
    return (choice.get("message") or {}).get("content") or "", choice.get("finish_reason"), answer.get("usage") or {}


def _plain_http_without_proxy(base_url: str) -> bool:
    """Whether ``base_url`` is plain http and no proxy setting of the environment (as httpx reads them) applies."""
    url = urlsplit(base_url)
    if url.scheme != "http" or not url.hostname:
        return False
    proxies = urllib.request.getproxies()
    return not (proxies.get("http") or proxies.get("all")) or urllib.request.proxy_bypass(url.hostname)


def _finish_reason(value: str | None) -> FinishReason:
    return "length" if value == "length" else "stop"


def _message(event: dict[str, Any]) -> str:
    error = event.get("error")
    message = error.get("message") if isinstance(error, dict) else error
    return str(message or "no message")[:200]


def _error_message(response: httpx.Response) -> str:
    return _error_text(response.content, response.reason_phrase)


def _error_text(body: bytes, reason: str) -> str:
    """The message of an upstream's error body (OpenAI shape, else its start, else the reason phrase)."""
    try:
        return _message(json.loads(body))
    except (ValueError, AttributeError):
        return body.decode("utf-8", "replace")[:200] or reason
