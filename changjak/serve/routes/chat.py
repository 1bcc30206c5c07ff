"""POST /v1/chat/completions: one reply from the served model, whole or streamed.

A stream is server-sent events: a first delta with ``role: "assistant"``, one delta per piece of
text, a last chunk with ``finish_reason``, a usage chunk when ``stream_options.include_usage``,
then ``data: [DONE]``. Every chunk carries the same ``id`` and ``created``. If the backend fails
mid-stream, an error event goes out before ``[DONE]``; if the client goes away, generation stops.

The safety policy (``changjak.serve.guard``) sees the request before the model (a refused message
is a 400 ``content_policy_violation``) and the answer after it: a whole answer the policy withholds
comes back empty with ``finish_reason: "content_filter"``; a stream it cuts ends with that
finish_reason and an error event, and its generation stops.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from changjak.backends.inference import GenerationChunk, GenerationParams
from changjak.errors import BadRequest, ContentPolicyViolation, NotFound
from changjak.safety.policy import ContentBlocked
from changjak.serve import guard
from changjak.serve.auth import Principal
from changjak.serve.deps import Safety, Served, ServedModel, SettingsDep
from changjak.serve.errors import to_api_error
from changjak.serve.guard import GuardedChat
from changjak.serve.protocol import (
    SSE_DONE,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ErrorBody,
    Usage,
    sse_event,
)
from changjak.settings import ServeSettings

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["chat"])
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may buffer a stream


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, _: Principal, served: Served,
                                 settings: SettingsDep, safety: Safety,
                                 response: Response) -> ChatCompletion | StreamingResponse:
    """Answer a chat, whole or streamed as server-sent events."""
    if body.model != served.model_id:
        raise NotFound(f"Unknown model; this server serves '{served.model_id}' (see GET /v1/models).",
                       param="model", code="model_not_found")
    params = _generation_params(body, settings.serve)
    chat = guard.request(safety, settings, body.messages)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served.model_id,
            "system_fingerprint": served.fingerprint}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(served, chat, params, head, include_usage),
                                 media_type="text/event-stream", headers={**_SSE_HEADERS, **served.headers})
    response.headers.update(served.headers)
    return await _complete(served, chat, params, head)


def _generation_params(body: ChatCompletionRequest, serve: ServeSettings) -> GenerationParams:
    """The backend's parameters for ``body``, within the server's limits."""
    if body.max_completion_tokens is not None:
        name, max_tokens = "max_completion_tokens", body.max_completion_tokens
    else:
        name, max_tokens = "max_tokens", body.max_tokens or min(serve.default_max_tokens, serve.max_tokens_limit)
    if max_tokens > serve.max_tokens_limit:
        raise BadRequest(f"Invalid '{name}': at most {serve.max_tokens_limit} tokens per reply on this server.",
                         param=name, code="invalid_value")
    return GenerationParams(max_tokens=max_tokens,
                            temperature=1.0 if body.temperature is None else body.temperature,
                            top_p=1.0 if body.top_p is None else body.top_p,
                            stop=list(body.stop or []), seed=body.seed)


async def _complete(served: ServedModel, chat: GuardedChat, params: GenerationParams,
                    head: dict[str, Any]) -> ChatCompletion:
    parts: list[str] = []
    async with aclosing(served.backend.generate(chat.messages, params)) as chunks:
        async for chunk in chunks:
            parts.append(chunk.text)
            last = chunk
    content, withheld = chat.answer("".join(parts))
    return ChatCompletion(**head, usage=_usage(last), choices=[
        Choice(message=AssistantMessage(content=content),
               finish_reason="content_filter" if withheld else last.finish_reason)])


async def _stream(served: ServedModel, chat: GuardedChat, params: GenerationParams, head: dict[str, Any],
                  include_usage: bool) -> AsyncIterator[str]:
    def event(**fields: Any) -> str:
        return sse_event(ChatCompletionChunk(**head, **fields))

    yield event(choices=[ChunkChoice(delta=Delta(role="assistant", content=""))])
    answer = chat.stream()
    try:
        async with aclosing(served.backend.generate(chat.messages, params)) as chunks:
            async for chunk in chunks:
                if text := answer.feed(chunk.text):
                    yield event(choices=[ChunkChoice(delta=Delta(content=text))])
                last = chunk
        if text := answer.finish():
            yield event(choices=[ChunkChoice(delta=Delta(content=text))])
        yield event(choices=[ChunkChoice(delta=Delta(), finish_reason=last.finish_reason)])
        if include_usage:
            yield event(choices=[], usage=_usage(last))
    except ContentBlocked as blocked:  # the policy cut the answer: generation stops with the stream
        yield event(choices=[ChunkChoice(delta=Delta(), finish_reason="content_filter")])
        error = ContentPolicyViolation(f"The answer was stopped by the safety policy "
                                       f"({', '.join(blocked.verdict.blocked_by)}).", code="content_filter")
        yield sse_event(ErrorBody.model_validate(error.to_dict()))
    except Exception as e:  # headers are sent: the client can only learn of it from the stream
        logger.exception("generation of %s failed mid-stream", head["id"])
        try:
            if text := answer.finish():  # what was made before the failure, checked like the rest
                yield event(choices=[ChunkChoice(delta=Delta(content=text))])
        except ContentBlocked:
            pass
        yield sse_event(ErrorBody.model_validate(to_api_error(e).to_dict()))
    yield SSE_DONE


def _usage(last: GenerationChunk) -> Usage:
    return Usage(prompt_tokens=last.prompt_tokens, completion_tokens=last.completion_tokens,
                 total_tokens=last.prompt_tokens + last.completion_tokens)
