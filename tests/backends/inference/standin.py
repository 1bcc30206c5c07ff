"""A stand-in OpenAI-compatible server (what vLLM would be), for the ``openai`` backend's tests,
the gateway's lifecycle tests and ``benchmarks/gateway.py``.

    python -m tests.backends.inference.standin --port 8101 [--delay 0.01] [--reply 안녕하세요]

``POST /v1/chat/completions`` answers whole or streamed (SSE, ``stream_options.include_usage``)
with :class:`~changjak.backends.inference.fake.FakeBackend` doing the generating, so ``max_tokens``
and ``stop`` behave like a real server's. ``app.state.log`` keeps each request body and
``app.state.cancelled`` counts streams whose client went away before the end.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from changjak.backends.inference.base import GenerationParams
from changjak.backends.inference.fake import FakeBackend


def create_standin(*, model: str = "upstream-model", reply: str | None = None, delay: float = 0.0,
                   fail_after: int | None = None, status: int = 200,
                   adapters: dict[str, str] | None = None) -> Starlette:
    """``adapters``: LoRA names it serves as models (like vLLM), each answering with its own reply."""
    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": model, "object": "model", "created": 0,
                                                          "owned_by": "standin"}]})

    async def chat(request: Request) -> Response:
        body = await request.json()
        app.state.log.append(body)
        if status != 200:
            return JSONResponse({"error": {"message": "stand-in refuses", "type": "server_error",
                                           "param": None, "code": None}}, status_code=status)
        asked = body.get("model", model)
        if adapters is not None and asked != model and asked not in adapters:  # else: any name is the model
            return JSONResponse({"error": {"message": f"The model `{asked}` does not exist.",
                                           "type": "NotFoundError", "param": None, "code": 404}}, status_code=404)
        fake = FakeBackend(model, reply=(adapters or {}).get(asked, reply), delay=delay, fail_after=fail_after)
        stop = body.get("stop") or []
        params = GenerationParams(max_tokens=body.get("max_tokens") or 256, temperature=body.get("temperature", 1.0),
                                  top_p=body.get("top_p", 1.0), stop=[stop] if isinstance(stop, str) else stop,
                                  seed=body.get("seed"))
        head = {"id": "chatcmpl-standin", "created": int(time.time()), "model": body.get("model", model)}
        if not body.get("stream"):
            chunks = [c async for c in fake.generate(body["messages"], params)]
            last = chunks[-1]
            return JSONResponse({**head, "object": "chat.completion", "choices": [{
                "index": 0, "message": {"role": "assistant", "content": "".join(c.text for c in chunks)},
                "finish_reason": last.finish_reason}], "usage": _usage(last)})
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(_events(fake, body["messages"], params, head, usage),
                                 media_type="text/event-stream")

    async def _events(fake: FakeBackend, messages: list[dict], params: GenerationParams, head: dict,
                      include_usage: bool) -> AsyncIterator[str]:
        def event(**fields: object) -> str:
            return f"data: {json.dumps({**head, 'object': 'chat.completion.chunk', **fields})}\n\n"

        done = False
        try:
            yield event(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            try:
                async for chunk in fake.generate(messages, params):
                    if chunk.text:
                        yield event(choices=[{"index": 0, "delta": {"content": chunk.text}, "finish_reason": None}])
                    last = chunk
            except Exception as e:  # noqa: BLE001 - a failing upstream reports it in the stream
                yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"
                done = True
                return
            yield event(choices=[{"index": 0, "delta": {}, "finish_reason": last.finish_reason}])
            if include_usage:
                yield event(choices=[], usage=_usage(last))
            yield "data: [DONE]\n\n"
            done = True
        finally:
            if not done:
                app.state.cancelled += 1

    app = Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])
    app.state.log, app.state.cancelled = [], 0
    return app


def _usage(last) -> dict:
    return {"prompt_tokens": last.prompt_tokens, "completion_tokens": last.completion_tokens,
            "total_tokens": last.prompt_tokens + last.completion_tokens}


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--reply")
    parser.add_argument("--model", default="upstream-model")
    args = parser.parse_args()
    app = create_standin(model=args.model, reply=args.reply, delay=args.delay)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
