"""Prepared Korean chat data beside the tiny model, for the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from changjak.settings import Settings

CHATS = [
    ("안녕하세요?", "안녕하세요. 오늘 날씨가 정말 좋네요."),
    ("소설의 첫 문장을 써 주세요.", "바다는 조용했다."),
    ("주인공은 어디에 있나요?", "주인공은 비 내리는 골목에 있다."),
    ("이 영화는 무슨 이야기인가요?", "우정과 배신에 관한 이야기입니다."),
    ("애니메이션 장면을 써 주세요.", "소녀는 하늘을 나는 고래를 따라갔다."),
    ("다음 화 줄거리를 요약해 주세요.", "인물들이 오래된 편지를 발견한다."),
    ("커피를 좋아하세요?", "저는 커피보다 차를 더 좋아해요."),
    ("짧은 대사를 써 주세요.", "\"당신은요?\" 그녀가 물었다."),
]


@pytest.fixture
def train_settings(tiny_settings: Settings, tmp_path: Path) -> Settings:
    """tiny_settings with a handful of Korean chats prepared (all in the train split)."""
    from changjak.data import prepare

    raw = tmp_path / "raw" / "chats.jsonl"
    raw.parent.mkdir()
    raw.write_text("".join(json.dumps({"messages": [{"role": "user", "content": u},
                                                    {"role": "assistant", "content": a}]},
                                      ensure_ascii=False) + "\n" for u, a in CHATS), encoding="utf-8")
    data = tiny_settings.data.model_copy(update={"inputs": [raw], "val_fraction": 0.0, "test_fraction": 0.0,
                                                 "system_prompt": None})
    settings = tiny_settings.model_copy(update={"data": data})
    prepare.main(settings)
    return settings
