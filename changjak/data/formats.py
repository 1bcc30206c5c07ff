"""The input formats we accept, validated with pydantic and converted to one chat shape.

    chat      {"messages": [{"role": "system|user|assistant", "content": "..."}]}
    alpaca    {"instruction": "...", "input": "...", "output": "..."}
    creative  {"genre": "anime|movie|novel|series", "title": ..., "prompt"|"synopsis": ...,
               "text"|"story": ...}
    mapped    any other JSON object, renamed through ``data.field_mapping`` first

Every string is normalised while it is validated. A record that cannot be used raises
:class:`Invalid` carrying a stable reason code (the ``reason`` column of ``rejects.jsonl``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from changjak.data.normalize import normalize_text

GENRES = {"anime": "애니메이션", "movie": "영화", "novel": "소설", "series": "시리즈"}
FIELDS = frozenset({"messages", "system", "instruction", "input", "output", "genre", "title",
                    "prompt", "synopsis", "text", "story"})


class Invalid(Exception):
    """A record we cannot use; ``reason`` is a stable code, ``detail`` says where, never what."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _non_empty(value: str) -> str:
    if not value:
        raise PydanticCustomError("empty_field", "must not be empty")
    return value


def _genre(value: str) -> str:
    key = value.lower()
    for code, korean in GENRES.items():
        if key in (code, korean):
            return code
    raise PydanticCustomError("unknown_genre", "unknown genre; use one of " + ", ".join(GENRES))


Text = Annotated[str, AfterValidator(normalize_text), AfterValidator(_non_empty)]
OptionalText = Annotated[str, AfterValidator(normalize_text)]
Genre = Annotated[str, AfterValidator(normalize_text), AfterValidator(_genre)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class Message(_Record):
    role: Literal["system", "user", "assistant"]
    content: Text


class ChatRecord(_Record):
    messages: list[Message]
    genre: Genre | None = None

    @model_validator(mode="after")
    def _turns(self) -> ChatRecord:
        roles = [m.role for m in self.messages]
        if not roles:
            raise PydanticCustomError("empty_field", "messages must not be empty")
        if "assistant" not in roles:
            raise PydanticCustomError("no_assistant_turn", "the conversation has no assistant turn")
        if roles[-1] != "assistant":
            raise PydanticCustomError("not_ending_with_assistant", "the last turn must be the assistant's")
        if "user" not in roles:
            raise PydanticCustomError("no_user_turn", "the conversation has no user turn")
        return self


class AlpacaRecord(_Record):
    instruction: Text
    input: OptionalText = ""
    output: Text
    system: OptionalText = ""
    genre: Genre | None = None


class CreativeRecord(_Record):
    genre: Genre
    title: OptionalText = ""
    prompt: OptionalText = ""
    synopsis: OptionalText = ""
    text: OptionalText = ""
    story: OptionalText = ""
    system: OptionalText = ""

    @model_validator(mode="after")
    def _either(self) -> CreativeRecord:
        for a, b in (("prompt", "synopsis"), ("text", "story")):
            if not (getattr(self, a) or getattr(self, b)):
                given = self.model_fields_set & {a, b}
                reason = "empty_field" if given else "missing_field"
                raise PydanticCustomError(reason, f"needs a non-empty {a!r} or {b!r}")
        return self


@dataclass(frozen=True)
class Converted:
    messages: list[dict[str, str]]
    format: str
    genre: str | None


def detect(record: dict[str, Any]) -> str | None:
    """The format a (renamed) record is written in, or None."""
    if "messages" in record:
        return "chat"
    if "instruction" in record or "output" in record:
        return "alpaca"
    if record.keys() & {"genre", "prompt", "synopsis", "text", "story"}:
        return "creative"
    return None


def creative_request(record: CreativeRecord) -> str:
    """A natural Korean request built from a creative record's genre, title and prompt/synopsis."""
    lines = [f"다음 조건에 맞는 {GENRES[record.genre]} 이야기를 써 주세요.", ""]
    if record.title:
        lines.append(f"제목: {record.title}")
    if record.synopsis:
        lines.append(f"줄거리: {record.synopsis}")
    if record.prompt:
        lines.append(f"요청: {record.prompt}")
    return "\n".join(lines)


def convert(value: Any, field_mapping: dict[str, str], system_prompt: str | None) -> Converted:
    """Validate one parsed JSON value and convert it to chat messages; raises :class:`Invalid`."""
    if not isinstance(value, dict):
        raise Invalid("not_an_object", f"expected a JSON object, got {type(value).__name__}")
    mapped = bool(field_mapping.keys() & value.keys())
    record = {field_mapping.get(k, k): v for k, v in value.items()}
    kind = detect(record)
    if kind is None:
        raise Invalid("unknown_format", "no chat, alpaca or creative fields (set data.field_mapping)")
    try:
        if kind == "chat":
            chat = ChatRecord.model_validate(record)
            messages, system, genre = [m.model_dump() for m in chat.messages], None, chat.genre
        elif kind == "alpaca":
            alpaca = AlpacaRecord.model_validate(record)
            user = alpaca.instruction + (f"\n\n{alpaca.input}" if alpaca.input else "")
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": alpaca.output}]
            system, genre = alpaca.system, alpaca.genre
        else:
            creative = CreativeRecord.model_validate(record)
            messages = [{"role": "user", "content": creative_request(creative)},
                        {"role": "assistant", "content": creative.text or creative.story}]
            system, genre = creative.system, creative.genre
    except ValidationError as e:
        raise _invalid(e) from None
    if system:
        messages.insert(0, {"role": "system", "content": system})
    elif messages[0]["role"] != "system" and system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return Converted(messages, "mapped" if mapped else kind, genre)


def _invalid(error: ValidationError) -> Invalid:
    first = error.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "record"
    kind = first["type"]
    if kind == "missing":
        reason = "missing_field"
    elif kind == "literal_error" and first["loc"][-1:] == ("role",):
        reason = "bad_role"
    elif kind == "too_short":
        reason = "empty_field"
    elif kind in ("empty_field", "missing_field", "unknown_genre", "no_assistant_turn",
                  "not_ending_with_assistant", "no_user_turn"):
        reason = kind
    else:
        reason = "wrong_type"
    return Invalid(reason, f"{where}: {first['msg']}")
