"""The ``openai`` backend: the model runs on another server that speaks the OpenAI API (vLLM, or
anything compatible), and the gateway streams from it with httpx.

    CHANGJAK_SERVE__UPSTREAM_URL=http://vllm:8000/v1 changjak serve --backend openai

Each generation is one streamed ``POST {upstream_url}/chat/completions`` with ``max_tokens``,
``temperature``, ``top_p``, ``stop`` and ``seed`` from :class:`GenerationParams` (an ``adapter``
is sent as the model name: vLLM serves each LoRA under its own name). Its ``finish_reason`` and
``usage`` come back on the last chunk. Closing the reply's iterator closes the HTTP stream, and
an OpenAI-compatible server stops generating when its client goes (vLLM aborts the request).
Upstream errors, timeouts and refused connections become :class:`~changjak.errors.BackendError`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from changjak.backends.inference.base import FinishReason, GenerationChunk, GenerationParams
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
            "stream": True, "stream_options": {"include_usage": True}, "max_tokens": params.max_tokens,
            "temperature": params.temperature, "top_p": params.top_p}
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    async def generate(self, messages: list[dict], params: GenerationParams) -> AsyncIterator[GenerationChunk]:
        """Stream the upstream's reply; closing this iterator closes the upstream stream."""
        finish: str | None = None
        usage: dict[str, Any] = {}
        pieces = 0
        try:
            async with self.client.stream("POST", "/chat/completions",
                                          json=self.request_body(messages, params)) as response:
                if response.status_code >= 400:
                    await response.aread()
                    if response.status_code == 404 and getattr(params, "adapter", None):
                        raise BackendError(f"the upstream server does not serve the adapter {params.adapter!r}",
                                           hint="load it there first (vLLM: --lora-modules NAME=PATH)")
                    raise BackendError(f"the upstream server answered {response.status_code}: "
                                       f"{_error_message(response)}")
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        raise BackendError(f"the upstream server failed mid-stream: {_message(event)}")
                    for choice in event.get("choices") or ():
                        if text := (choice.get("delta") or {}).get("content"):
                            pieces += 1
                            yield GenerationChunk(text)
                        finish = choice.get("finish_reason") or finish
                    usage = event.get("usage") or usage
        except httpx.HTTPError as e:
            raise BackendError(f"the upstream server is not answering ({e.__class__.__name__})",
                               hint="check settings.serve.upstream_url and that the server is up") from e
        except json.JSONDecodeError as e:
            raise BackendError("the upstream server sent an event that is not JSON") from e
        yield GenerationChunk(finish_reason=_finish_reason(finish), prompt_tokens=usage.get("prompt_tokens") or 0,
                              completion_tokens=usage.get("completion_tokens") or pieces)

    async def ready(self) -> bool:
        """The upstream lists its models (the gateway's /readyz also asks it for one token)."""
        try:
            response = await self.client.get("/models")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        await self.client.aclose()


def _finish_reason(value: str | None) -> FinishReason:
    return "length" if value == "length" else "stop"


def _message(event: dict[str, Any]) -> str:
    error = event.get("error")
    message = error.get("message") if isinstance(error, dict) else error
    return str(message or "no message")[:200]


def _error_message(response: httpx.Response) -> str:
    try:
        return _message(response.json())
    except ValueError:
        return response.text[:200] or response.reason_phrase
