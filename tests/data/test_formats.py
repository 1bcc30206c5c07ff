"""Format detection, validation with reason codes, and conversion to chat messages."""

from __future__ import annotations

import pytest

from changjak.data.formats import Invalid, convert

SYSTEM = "기본 시스템 프롬프트"


def roles(messages: list[dict[str, str]]) -> list[str]:
    return [m["role"] for m in messages]


def test_chat_gets_the_default_system_prompt_and_normalised_text() -> None:
    out = convert({"messages": [{"role": "user", "content": " 시를  써 줘 "},
                                {"role": "assistant", "content": "봄이 왔다."}]}, {}, SYSTEM)
    assert out.format == "chat" and out.genre is None
    assert out.messages == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "시를 써 줘"},
                            {"role": "assistant", "content": "봄이 왔다."}]


def test_a_records_own_system_turn_is_kept_and_none_means_no_default() -> None:
    own = convert({"messages": [{"role": "system", "content": "너는 시인이다"}, {"role": "user", "content": "시"},
                                {"role": "assistant", "content": "달빛"}]}, {}, SYSTEM)
    assert own.messages[0] == {"role": "system", "content": "너는 시인이다"}
    assert roles(own.messages) == ["system", "user", "assistant"]
    bare = convert({"instruction": "요약", "output": "짧게"}, {}, None)
    assert roles(bare.messages) == ["user", "assistant"]


def test_alpaca_joins_instruction_and_input() -> None:
    out = convert({"instruction": "다음 글을 요약하세요", "input": "긴 글입니다", "output": "요약"}, {}, SYSTEM)
    assert out.format == "alpaca"
    assert out.messages[1:] == [{"role": "user", "content": "다음 글을 요약하세요\n\n긴 글입니다"},
                                {"role": "assistant", "content": "요약"}]
    without_input = convert({"instruction": "시를 쓰세요", "input": "", "output": "시"}, {}, SYSTEM)
    assert without_input.messages[1]["content"] == "시를 쓰세요"


def test_creative_builds_a_korean_request_from_genre_title_and_synopsis() -> None:
    out = convert({"genre": "movie", "title": "비밀의 숲", "synopsis": "검사가 진실을 쫓는다.",
                   "story": "새벽 세 시, 전화가 울렸다."}, {}, SYSTEM)
    assert (out.format, out.genre) == ("creative", "movie")
    user, assistant = out.messages[1]["content"], out.messages[2]["content"]
    assert user.startswith("다음 조건에 맞는 영화 이야기를 써 주세요.")
    assert "제목: 비밀의 숲" in user and "줄거리: 검사가 진실을 쫓는다." in user
    assert assistant == "새벽 세 시, 전화가 울렸다."


@pytest.mark.parametrize(("genre", "code", "korean"), [
    ("anime", "anime", "애니메이션"), ("Novel", "novel", "소설"), ("시리즈", "series", "시리즈"), ("영화", "movie", "영화"),
])
def test_genre_names_in_english_or_korean(genre: str, code: str, korean: str) -> None:
    out = convert({"genre": genre, "prompt": "고양이가 말을 한다", "text": "어느 날 고양이가 말했다."}, {}, None)
    assert out.genre == code
    assert out.messages[0]["content"] == f"다음 조건에 맞는 {korean} 이야기를 써 주세요.\n\n요청: 고양이가 말을 한다"


def test_field_mapping_renames_before_detection() -> None:
    record = {"question": "바다에 관한 시", "answer": "파도가 친다", "genre": "novel"}
    out = convert(record, {"question": "instruction", "answer": "output"}, None)
    assert (out.format, out.genre) == ("mapped", "novel")
    assert out.messages == [{"role": "user", "content": "바다에 관한 시"}, {"role": "assistant", "content": "파도가 친다"}]
    with pytest.raises(Invalid) as e:
        convert(record, {}, None)
    assert e.value.reason == "missing_field"  # "genre" alone looks creative, without its fields


@pytest.mark.parametrize(("value", "reason"), [
    ([1, 2], "not_an_object"),
    ("text", "not_an_object"),
    ({"foo": "bar"}, "unknown_format"),
    ({"instruction": "요약"}, "missing_field"),
    ({"genre": "novel", "prompt": "바다"}, "missing_field"),
    ({"genre": "novel", "text": "바다"}, "missing_field"),
    ({"genre": "novel", "prompt": "  ", "text": "바다"}, "empty_field"),
    ({"instruction": "  \u200b ", "output": "답"}, "empty_field"),
    ({"messages": []}, "empty_field"),
    ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "답"}]}, "empty_field"),
    ({"messages": [{"role": "bot", "content": "안녕"}, {"role": "assistant", "content": "답"}]}, "bad_role"),
    ({"messages": [{"role": "user", "content": "안녕"}]}, "no_assistant_turn"),
    ({"messages": [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": "답"},
                   {"role": "user", "content": "또"}]}, "not_ending_with_assistant"),
    ({"messages": [{"role": "system", "content": "규칙"}, {"role": "assistant", "content": "답"}]}, "no_user_turn"),
    ({"genre": "webtoon", "prompt": "바다", "text": "파도"}, "unknown_genre"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "답"}]}, "wrong_type"),
    ({"messages": "안녕"}, "wrong_type"),
])
def test_reject_reasons(value: object, reason: str) -> None:
    with pytest.raises(Invalid) as e:
        convert(value, {}, SYSTEM)
    assert e.value.reason == reason
    assert e.value.detail
