"""The OpenAI chat-completions wire format, as the official ``openai`` SDK sends and reads it.

Requests accept fields this server does not know: they are ignored and their names (never their
values) logged at debug level. Validation failures become 400s in the error shape at the bottom
of this file (see ``changjak.serve.errors``). Text fields refuse NUL bytes and lone surrogates
(400 naming the field, never a 500 later); :func:`check_bounds` holds a request to
``settings.limits`` (message count, prompt length, stop-string length). Streams are server-sent events: one
``data: <chunk JSON>`` per event and ``data: [DONE]`` at the end.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from changjak.errors import BadRequest

logger = logging.getLogger(__name__)
FinishReason = Literal["stop", "length", "content_filter"]
SSE_DONE = "data: [DONE]\n\n"


def sse_event(payload: BaseModel) -> str:
    """One server-sent event carrying ``payload`` as JSON."""
    return f"data: {payload.model_dump_json()}\n\n"


# Requests


def _clean_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (it holds a lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_clean_text)]  # what every free-text field of a request is


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _log_unknown_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and (unknown := set(data) - set(cls.model_fields)):
            logger.debug("%s: ignoring unknown fields %s", cls.__name__, sorted(map(str, unknown)))
        return data


class ChatMessage(_Lenient):
    role: Literal["system", "user", "assistant"]
    content: Text
    name: Text | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    model: Text
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name; wins over max_tokens
    # vLLM's extension: no end of sequence before this many tokens (stop strings still end it)
    min_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)  # None = 1.0, as OpenAI
    top_p: float | None = Field(None, gt=0, le=1)
    stop: list[Annotated[Text, Field(min_length=1)]] | None = Field(None, max_length=4)
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)  # int64, as OpenAI's; beyond it backends overflow
    user: Text | None = None
    # changjak's extension: ground the answer in the tenant's documents (true, or {"top_k", "min_score"})
    rag: bool | dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_tools(cls, data: Any) -> Any:
        if isinstance(data, dict):
            from changjak.safety.fencing import refuse_tool_fields

            messages = data.get("messages")
            view = data if isinstance(messages, list | None) else {**data, "messages": None}  # a bad type: pydantic says so
            refuse_tool_fields(view)  # this assistant calls no tools: such fields are refused, not ignored
        return data

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_is_a_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, v: int | None) -> int | None:
        if v not in (None, 1):
            raise ValueError("only n=1 is supported: this server returns one choice per request")
        return v


def check_bounds(request: ChatCompletionRequest, limits: Any) -> None:
    """BadRequest naming the parameter when ``request`` is beyond ``settings.limits``."""
    if len(request.messages) > limits.max_messages:
        raise BadRequest(f"Invalid 'messages': at most {limits.max_messages} messages per request on this server.",
                         param="messages", code="invalid_value")
    if sum(len(m.content) for m in request.messages) > limits.max_prompt_chars:
        raise BadRequest(f"Invalid 'messages': the messages together may hold at most {limits.max_prompt_chars} "
                         "characters on this server.", param="messages", code="context_length_exceeded")
    for i, stop in enumerate(request.stop or []):
        if len(stop) > limits.max_stop_chars:
            raise BadRequest(f"Invalid 'stop[{i}]': a stop string may be at most {limits.max_stop_chars} characters.",
                             param=f"stop[{i}]", code="invalid_value")


# Responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason


class Citation(BaseModel):
    """A retrieved chunk the answer was grounded in (changjak's extension, with ``rag``)."""

    doc_id: str
    chunk_id: str
    title: str | None = None
    score: float


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: Usage
    citations: list[Citation] | None = None  # set when the request asked for rag and documents matched


class Delta(BaseModel):
    role: Literal["assistant"] | None = Field(None, exclude_if=lambda v: v is None)
    content: str | None = Field(None, exclude_if=lambda v: v is None)


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]  # empty in the usage chunk
    usage: Usage | None = None  # set in the usage chunk only
    citations: list[Citation] | None = None  # on the first chunk, when rag found documents


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "changjak"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# Errors


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
