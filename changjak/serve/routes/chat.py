"""POST /v1/chat/completions: one reply from the served model, whole or streamed.

A stream is server-sent events: a first delta with ``role: "assistant"``, one delta per piece of
text, a last chunk with ``finish_reason``, a usage chunk when ``stream_options.include_usage``,
then ``data: [DONE]``. Every chunk carries the same ``id`` and ``created``. The backend's first chunk
is awaited before the response starts, so a backend that refuses the request (a full queue, an
upstream's error) gets an HTTP error as a whole answer would; if it fails after that, an error event
goes out before ``[DONE]``; if the client goes away, generation stops.

Order per request: bounds (``protocol.check_bounds``), the response cache (``changjak.serve.cache``;
header ``X-Changjak-Cache: hit|miss`` on the answer), the key's limits (``changjak.serve.limits``:
a 429 before any work; a hit takes one request of rpm and nothing else; a miss reserves its tokens
and a concurrency slot, settled and freed when the response ends, however it ends), the safety
policy on the request (``changjak.serve.guard``: a refused message is a 400
``content_policy_violation``), then the model.
The answer, fresh or cached, goes through the policy's answer checks: a whole answer it withholds
comes back empty with ``finish_reason: "content_filter"``; a stream it cuts ends with that
finish_reason and an error event, and its generation stops. A cached hit is sent as a short stream
when ``stream`` is true.

The request context gets the model version, the token counts (what the model processed: 0 for a
hit) and ``decisions["limits"|"cache"|"safety"]``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from changjak.backends.inference import GenerationParams
from changjak.errors import BackendError, BadRequest, ContentPolicyViolation, NotFound
from changjak.safety.policy import ContentBlocked
from changjak.serve import guard, retrieval
from changjak.serve.auth import Principal
from changjak.serve.cache import HEADER, CachedAnswer, Lookup, ResponseCache, wanted
from changjak.serve.context import RequestContext, context_of
from changjak.serve.deps import GatewayDep, ServedModel
from changjak.serve.errors import to_api_error
from changjak.serve.guard import GuardedChat
from changjak.serve.limits import Lease
from changjak.serve.protocol import (
    SSE_DONE,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Citation,
    Delta,
    ErrorBody,
    Usage,
    check_bounds,
    sse_event,
)
from changjak.settings import ServeSettings

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["chat"])
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may buffer a stream


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, caller: Principal, gateway: GatewayDep,
                                 request: Request) -> Response:
    """Answer a chat, whole or streamed as server-sent events."""
    settings, served, safety, cache, limiter = (gateway.settings, gateway.served, gateway.safety, gateway.cache,
                                                gateway.limiter)
    if body.model != served.model_id:
        raise NotFound(f"Unknown model; this server serves '{served.model_id}' (see GET /v1/models).",
                       param="model", code="model_not_found")
    check_bounds(body, settings.limits)
    params = _generation_params(body, settings.serve)
    ctx = context_of(request) or RequestContext(request_id="-")
    ctx.model_version = served.version
    grounding = retrieval.options(body.rag, settings.rag.auto)
    found = None
    if cache.enabled and grounding is None and wanted(request.headers, params):  # documents change: no cache
        found = await cache.lookup(caller.tenant, served.model_id, served.version, None, params, body.messages)
    hit = found.hit if found else None
    prompt_estimate = sum(len(m.content) for m in body.messages)  # ~ tokens; settled to the real count
    lease = await limiter.admit(caller, prompt_estimate + params.max_tokens, ctx.decisions, hold=hit is None)
    ctx.decisions["cache"] = "hit" if hit else ("miss" if found else "skip")  # of answered requests only
    run = _Run(ctx, lease, prompt_estimate)
    handed_off = False  # a fresh stream finishes when it ends (_ClosingStream), not here
    try:
        try:
            chat = guard.request(safety, settings, body.messages, caller.tenant)
        except ContentPolicyViolation as refused:
            ctx.decisions["safety"] = {"request": getattr(refused, "verdicts", []), "answer": [], "refused": True}
            raise
        run.chat = chat
        citations = [Citation(**vars(c)) for c in await retrieval.ground(request, chat, caller, grounding)] or None
        headers = {**served.headers, **({HEADER: ctx.decisions["cache"]} if found else {})}
        head = {"id": f"chatcmpl-{os.urandom(16).hex()}", "created": int(time.time()), "model": served.model_id,
                "system_fingerprint": served.fingerprint}
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if hit is not None:  # no slot, no tokens: only rpm counts it
            content, withheld = chat.answer(hit.content)
            if body.stream:
                return StreamingResponse(_replay(hit, content, withheld, head, include_usage),
                                         media_type="text/event-stream", headers={**_SSE_HEADERS, **headers})
            return _json(_completion(head, content, "content_filter" if withheld else hit.finish_reason, hit), headers)
        if body.stream:
            chunks, first = await _start(served, chat, params, run)  # a refusal is still an HTTP error here
            stream = _stream(chunks, first, chat, head, include_usage, run, cache, found, citations)

            async def close() -> None:  # the backend's generator too, should the stream never have started
                await chunks.aclose()
                await run.finish()

            handed_off = True
            return _ClosingStream(stream, close, media_type="text/event-stream", headers={**_SSE_HEADERS, **headers})
        answer = await _complete(served, chat, params, head, run, cache, found)
        answer.citations = citations
        return _json(answer, headers)
    finally:
        if not handed_off:
            await run.finish_shielded()


def _generation_params(body: ChatCompletionRequest, serve: ServeSettings) -> GenerationParams:
    """The backend's parameters for ``body``, within the server's limits."""
    if body.max_completion_tokens is not None:
        name, max_tokens = "max_completion_tokens", body.max_completion_tokens
    else:
        name, max_tokens = "max_tokens", body.max_tokens or min(serve.default_max_tokens, serve.max_tokens_limit)
    if max_tokens > serve.max_tokens_limit:
        raise BadRequest(f"Invalid '{name}': at most {serve.max_tokens_limit} tokens per reply on this server.",
                         param=name, code="invalid_value")
    min_tokens = body.min_tokens or 0
    if min_tokens > max_tokens:
        raise BadRequest(f"Invalid 'min_tokens': {min_tokens} is more than the reply's {name} ({max_tokens}).",
                         param="min_tokens", code="invalid_value")
    return GenerationParams(max_tokens=max_tokens, min_tokens=min_tokens,
                            temperature=1.0 if body.temperature is None else body.temperature,
                            top_p=1.0 if body.top_p is None else body.top_p,
                            stop=list(body.stop or []), seed=body.seed, whole=not body.stream)


@dataclass
class _Run:
    """One request's accounting: what the model processed, settled once the response has ended."""

    ctx: RequestContext
    lease: Lease
    prompt_estimate: int
    chat: GuardedChat | None = None
    generating: bool = False  # the model was asked
    pieces: int = 0  # deltas received from the backend (a lower bound on tokens, if it never finishes)
    usage: Usage | None = None  # the backend's own counts, once it has finished

    async def finish(self) -> None:
        if self.usage is not None:
            self.ctx.prompt_tokens, self.ctx.completion_tokens = self.usage.prompt_tokens, self.usage.completion_tokens
            used = self.usage.total_tokens
        else:  # refused, a hit, or failed/hung up before the counts came: what it plausibly cost
            used = self.prompt_estimate + self.pieces if self.generating else 0
        if self.chat is not None:
            self.ctx.decisions["safety"] = {
                "request": [v for v in self.chat.verdicts if v.get("surface") == "request"],
                "answer": [v for v in self.chat.verdicts if v.get("surface") != "request"]}
        try:
            await self.lease.settle(used)
        except Exception:  # the lease lapses by itself (concurrency_lease_s); the answer stands
            logger.exception("could not settle the limits of request %s", self.ctx.request_id)

    async def finish_shielded(self) -> None:
        """``finish()``, which a cancelled request still completes: it gives its slot back."""
        if not self.lease.holds:  # a hit, or no limits: finish() awaits nothing, so nothing can cut it short
            await self.finish()
            return
        with anyio.CancelScope(shield=True):
            await self.finish()


class _ClosingStream(StreamingResponse):
    """A stream that, however it ends (done, client gone, error), closes its generator, then ``on_close``."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], Awaitable[None]], **kw: Any) -> None:
        super().__init__(content, **kw)
        self._content, self._on_close = content, on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._content.aclose()  # stops the generation of a client that hung up
                await self._on_close()


def _json(answer: ChatCompletion, headers: dict[str, str]) -> Response:
    """The answer serialised by pydantic in one pass (FastAPI's generic encoder costs ~0.2 ms a request)."""
    return Response(answer.model_dump_json(), media_type="application/json", headers=headers)


def _completion(head: dict[str, Any], content: str, finish_reason: str, counts: Any) -> ChatCompletion:
    return ChatCompletion(**head, usage=_usage(counts), choices=[
        Choice(message=AssistantMessage(content=content), finish_reason=finish_reason)])


async def _complete(served: ServedModel, chat: GuardedChat, params: GenerationParams, head: dict[str, Any],
                    run: _Run, cache: ResponseCache, found: Lookup | None) -> ChatCompletion:
    parts: list[str] = []
    run.generating = True
    async with aclosing(served.backend.generate(chat.messages, params)) as chunks:
        async for chunk in chunks:
            parts.append(chunk.text)
            run.pieces += 1
            last = chunk
    run.usage = _usage(last)
    content, withheld = chat.answer("".join(parts))
    if found and not withheld and not chat.vault:  # an answer holding the user's own PII is never stored
        await cache.store(found, CachedAnswer(content, last.finish_reason, last.prompt_tokens, last.completion_tokens))
    return _completion(head, content, "content_filter" if withheld else last.finish_reason, last)


async def _start(served: ServedModel, chat: GuardedChat, params: GenerationParams,
                 run: _Run) -> tuple[AsyncIterator[Any], Any]:
    """The backend's generator for a stream and its first chunk (None if it has none).

    A backend refuses at submission (a full queue: 503 ``model_overloaded``; an upstream's 4xx/5xx) on
    the first chunk, so asking for it before any byte is sent makes a refusal a real HTTP error.
    """
    chunks = served.backend.generate(chat.messages, params)
    run.generating = True
    try:
        return chunks, await anext(chunks)
    except StopAsyncIteration:
        return chunks, None
    except BaseException:
        with anyio.CancelScope(shield=True):
            await chunks.aclose()
        raise


async def _stream(chunks: AsyncIterator[Any], first: Any, chat: GuardedChat, head: dict[str, Any],
                  include_usage: bool, run: _Run, cache: ResponseCache, found: Lookup | None,
                  citations: list[Citation] | None = None) -> AsyncIterator[str]:
    """The events of a stream whose first chunk (``first``, from :func:`_start`) has come."""
    def event(**fields: Any) -> str:
        return sse_event(ChatCompletionChunk(**head, **fields))

    yield event(choices=[ChunkChoice(delta=Delta(role="assistant", content=""))], citations=citations)
    answer = chat.stream()
    sent: list[str] = []
    try:
        async with aclosing(chunks):
            chunk = last = first
            while chunk is not None:
                run.pieces += 1
                if text := answer.feed(chunk.text):
                    sent.append(text)
                    yield event(choices=[ChunkChoice(delta=Delta(content=text))])
                last, chunk = chunk, await anext(chunks, None)
        if last is None:
            raise BackendError("the backend ended the stream without a chunk")
        run.usage = _usage(last)
        if text := answer.finish():
            sent.append(text)
            yield event(choices=[ChunkChoice(delta=Delta(content=text))])
        if found and not chat.vault:
            await cache.store(found, CachedAnswer("".join(sent), last.finish_reason, last.prompt_tokens,
                                                last.completion_tokens))
        yield event(choices=[ChunkChoice(delta=Delta(), finish_reason=last.finish_reason)])
        if include_usage:
            yield event(choices=[], usage=run.usage)
    except ContentBlocked as blocked:  # the policy cut the answer: generation stops with the stream
        yield event(choices=[ChunkChoice(delta=Delta(), finish_reason="content_filter")])
        yield sse_event(ErrorBody.model_validate(_cut(blocked).to_dict()))
    except Exception as e:  # headers are sent: the client can only learn of it from the stream
        logger.exception("generation of %s failed mid-stream", head["id"])
        try:
            if text := answer.finish():  # what was made before the failure, checked like the rest
                yield event(choices=[ChunkChoice(delta=Delta(content=text))])
        except ContentBlocked:
            pass
        yield sse_event(ErrorBody.model_validate(to_api_error(e).to_dict()))
    yield SSE_DONE


async def _replay(hit: CachedAnswer, content: str, withheld: bool, head: dict[str, Any],
                  include_usage: bool) -> AsyncIterator[str]:
    """A cached answer as a short stream, with every invariant of a fresh one."""
    def event(**fields: Any) -> str:
        return sse_event(ChatCompletionChunk(**head, **fields))

    yield event(choices=[ChunkChoice(delta=Delta(role="assistant", content=""))])
    if withheld:
        yield event(choices=[ChunkChoice(delta=Delta(), finish_reason="content_filter")])
        yield sse_event(ErrorBody.model_validate(ContentPolicyViolation(
            "The answer was stopped by the safety policy.", code="content_filter").to_dict()))
    else:
        if content:
            yield event(choices=[ChunkChoice(delta=Delta(content=content))])
        yield event(choices=[ChunkChoice(delta=Delta(), finish_reason=hit.finish_reason)])
        if include_usage:
            yield event(choices=[], usage=_usage(hit))
    yield SSE_DONE


def _cut(blocked: ContentBlocked) -> ContentPolicyViolation:
    return ContentPolicyViolation(f"The answer was stopped by the safety policy "
                                  f"({', '.join(blocked.verdict.blocked_by)}).", code="content_filter")


def _usage(counts: Any) -> Usage:
    return Usage(prompt_tokens=counts.prompt_tokens, completion_tokens=counts.completion_tokens,
                 total_tokens=counts.prompt_tokens + counts.completion_tokens)
