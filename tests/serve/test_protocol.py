"""The wire format: lenient about unknown fields (logged by name only), strict about known ones."""

from __future__ import annotations

import json
import logging

import pytest
from pydantic import ValidationError

from changjak.errors import BadRequest
from changjak.serve.protocol import ChatCompletionChunk, ChatCompletionRequest, ChunkChoice, Delta

BASE = {"model": "changjak-writer", "messages": [{"role": "user", "content": "안녕"}]}


def test_unknown_fields_are_ignored_and_logged_by_name_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="changjak.serve.protocol")
    request = ChatCompletionRequest.model_validate(
        {**BASE, "logit_bias": {"50256": -100}, "metadata": {"token": "s3cr3t-value"},
         "messages": [{"role": "user", "content": "안녕", "refusal": None}]})
    assert "metadata" not in request.model_dump()
    assert "logit_bias" in caplog.text and "metadata" in caplog.text and "refusal" in caplog.text
    assert "s3cr3t-value" not in caplog.text


def test_one_stop_string_becomes_a_list() -> None:
    assert ChatCompletionRequest.model_validate({**BASE, "stop": "끝"}).stop == ["끝"]
    assert ChatCompletionRequest.model_validate(BASE).stop is None


@pytest.mark.parametrize("bad", [{"stop": [""]}, {"n": 2}, {"temperature": -0.1}, {"top_p": 1.5},
                                 {"messages": [{"role": "developer", "content": "x"}]}])
def test_known_fields_are_checked(bad: dict) -> None:
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({**BASE, **bad})


@pytest.mark.parametrize(("bad", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages[0].role"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}]}, "messages[0].tool_calls"),
])
def test_tool_calling_is_refused_not_ignored(bad: dict, param: str) -> None:
    with pytest.raises(BadRequest) as refused:
        ChatCompletionRequest.model_validate({**BASE, **bad})
    assert refused.value.param == param and refused.value.code == "unsupported_parameter"
    ChatCompletionRequest.model_validate({**BASE, "tools": [], "tool_choice": "none"})  # asking for none is fine


def test_a_chunk_omits_empty_delta_fields_but_keeps_finish_reason() -> None:
    def dump(delta: Delta, finish: str | None = None) -> dict:
        chunk = ChatCompletionChunk(id="c", created=1, model="m", choices=[ChunkChoice(delta=delta, finish_reason=finish)])
        return json.loads(chunk.model_dump_json())["choices"][0]

    assert dump(Delta(role="assistant", content=""))["delta"] == {"role": "assistant", "content": ""}
    assert dump(Delta(content="가")) == {"index": 0, "delta": {"content": "가"}, "logprobs": None,
                                         "finish_reason": None}
    assert dump(Delta(), "length")["delta"] == {}
