"""The whole data stage: formats in, rejects with reasons, PII masked, duplicates out, splits and manifest."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from changjak import cli
from changjak.data import manifest, prepare
from changjak.errors import ConfigError, DataError
from changjak.settings import Settings
from tests.data.conftest import chat, korean_text, write_jsonl

OUTPUTS = ("train.jsonl", "validation.jsonl", "test.jsonl", "rejects.jsonl", "manifest.json")
EXAMPLE_CONFIG = Path(__file__).parents[2] / "configs" / "data" / "field-mapping-example.yaml"


def rows(out: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text(encoding="utf-8").splitlines()]


def all_kept(out: Path) -> list[dict]:
    return [r for split in ("train", "validation", "test") for r in rows(out, f"{split}.jsonl")]


def test_every_format_becomes_chat_with_metadata(tmp_path: Path, data_settings) -> None:
    write_jsonl(tmp_path / "a.jsonl", [
        chat("바다에 관한 시를 써 주세요", "파도가 밀려온다."),
        {"instruction": "다음 문장을 이어 쓰세요", "input": "그날 밤", "output": "그날 밤, 별이 쏟아졌다."},
        {"genre": "anime", "title": "하늘 고래", "prompt": "소녀가 고래를 따라간다", "text": "고래는 구름 위를 헤엄쳤다."},
    ])
    (tmp_path / "b.json").write_text(json.dumps([{"question": "좋아하는 계절은?", "answer": "가을을 좋아해요."}],
                                                ensure_ascii=False), encoding="utf-8")
    settings = data_settings(tmp_path / "a.jsonl", tmp_path / "b.json",
                             field_mapping={"question": "instruction", "answer": "output"})
    result = prepare.main(settings)
    kept = {r["meta"]["format"]: r for r in all_kept(settings.data_dir)}
    assert set(kept) == {"chat", "alpaca", "creative", "mapped"}
    assert kept["creative"]["meta"] == {"source": "a.jsonl", "line": 3, "format": "creative", "genre": "anime"}
    assert kept["mapped"]["meta"] == {"source": "b.json", "line": 1, "format": "mapped", "genre": None}
    assert "애니메이션" in kept["creative"]["messages"][1]["content"]
    for r in kept.values():
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        assert r["messages"][0]["content"] == settings.data.system_prompt
    assert result["counts"]["per_genre"] == {"anime": 1, "none": 3}
    assert result["counts"]["per_source"]["a.jsonl"] == {"read": 3, "kept": 3, "rejected": 0}


def test_every_reject_reason_is_reported_with_file_and_line(tmp_path: Path, data_settings) -> None:
    long_story = "가" * 120
    answer = "첫 번째 답입니다. 바람이 불고 비가 내리는 밤, 주인공은 오래된 편지를 꺼내 읽었다"
    bad = [
        chat("첫 번째 요청입니다", answer + "."),  # kept
        "{not json 010-1234-5678",
        [1, 2],
        {"foo": "bar"},
        {"instruction": "답이 없는 요청"},
        {"instruction": "   ", "output": "빈 요청"},
        {"messages": [{"role": "bot", "content": "안녕"}, {"role": "assistant", "content": "답"}]},
        {"messages": [{"role": "user", "content": "혼잣말"}]},
        {"messages": [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": "답이에요"},
                      {"role": "user", "content": "또 물어요"}]},
        {"genre": "webtoon", "prompt": "바다", "text": "파도가 친다"},
        chat("짧은 답", "네"),
        chat("긴 이야기를 써 주세요", long_story),
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "답"}]},
        {"messages": [{"role": "system", "content": "규칙"}, {"role": "assistant", "content": "답"}]},
        chat("첫 번째 요청입니다", answer + "."),
        chat("첫 번째 요청입니다", answer + "!"),
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", bad)
    result = prepare.main(data_settings(path, min_chars=2, max_chars=100))
    rejects = rows(tmp_path / "out", "rejects.jsonl")
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (2, "invalid_json"), (3, "not_an_object"), (4, "unknown_format"), (5, "missing_field"),
        (6, "empty_field"), (7, "bad_role"), (8, "no_assistant_turn"), (9, "not_ending_with_assistant"),
        (10, "unknown_genre"), (11, "too_short"), (12, "too_long"), (13, "wrong_type"), (14, "no_user_turn"),
        (15, "exact_duplicate"), (16, "near_duplicate"),
    ]
    assert all(r["file"] == "bad.jsonl" and r["detail"] for r in rejects)
    assert rejects[0]["excerpt"] == "{not json <전화번호>"
    assert "(bad.jsonl:1)" in rejects[-2]["detail"] and "(bad.jsonl:1)" in rejects[-1]["detail"]
    counts = result["counts"]
    assert (counts["read"], counts["kept"], counts["rejected"]) == (16, 1, 15)
    assert sum(counts["rejected_by_reason"].values()) == 15


def test_pii_is_masked_in_training_text_and_counted(tmp_path: Path, data_settings) -> None:
    path = write_jsonl(tmp_path / "pii.jsonl", [
        chat("제 번호는 010-2345-6789이고 메일은 kim@example.com이에요", "카드 4111 1111 1111 1111는 쓰지 마세요."),
        chat("주민번호 900101-1234568로 가입했어요", "2024-01-15에 1,250,000원을 냈어요."),
    ])
    result = prepare.main(data_settings(path))
    text = json.dumps(all_kept(tmp_path / "out"), ensure_ascii=False)
    for secret in ("010-2345-6789", "kim@example.com", "4111 1111", "900101-1234568"):
        assert secret not in text
    assert "2024-01-15에 1,250,000원" in text
    assert result["pii_masked"] == {"phone": 1, "email": 1, "card": 1, "rrn": 1}


def test_mask_pii_off_keeps_the_text(tmp_path: Path, data_settings) -> None:
    path = write_jsonl(tmp_path / "pii.jsonl", [chat("번호 010-2345-6789", "알겠습니다")])
    result = prepare.main(data_settings(path, mask_pii=False))
    assert "010-2345-6789" in json.dumps(all_kept(tmp_path / "out"), ensure_ascii=False)
    assert result["pii_masked"] == {} and result["safety_flagged"] == {"pii": 1}


def test_the_safety_policy_rejects_what_it_blocks_and_counts_what_it_flags(tmp_path: Path, make_settings) -> None:
    path = write_jsonl(tmp_path / "safety.jsonl", [
        chat("악당의 대사를 써 줘", "\"이 씨발 놈들아, 다 덤벼라!\" 그가 외쳤다."),  # fiction may swear: flagged
        chat("이야기를 이어 써 줘", "그는 조용히 문을 닫았다. 밖에는 비가 내렸다."),
    ])
    inputs = {"inputs": [str(path)], "out_dir": str(tmp_path / "out")}
    creative = prepare.main(make_settings(data=inputs))
    assert creative["counts"]["kept"] == 2 and creative["safety_flagged"]["profanity"] == 1
    strict = prepare.main(make_settings(data=inputs, safety={"profile": "strict"}))
    assert strict["counts"]["kept"] == 1 and strict["counts"]["rejected_by_reason"] == {"safety": 1}
    (reject,) = rows(tmp_path / "out", "rejects.jsonl")
    assert reject["line"] == 1 and "profanity" in reject["detail"]


def test_duplicates_are_removed_before_splitting(tmp_path: Path, data_settings) -> None:
    rng = random.Random(7)
    story = korean_text(rng, 300)
    different = korean_text(rng, 300)
    path = write_jsonl(tmp_path / "dup.jsonl", [
        chat("이야기를 써 주세요", story), chat("이야기를 써 주세요", story),
        chat("이야기를 써 주세요.", story[:-1] + "!"), chat("이야기를 써 주세요", different),
    ])
    result = prepare.main(data_settings(path))
    kept = all_kept(tmp_path / "out")
    assert sorted(r["meta"]["line"] for r in kept) == [1, 4]
    assert result["counts"]["rejected_by_reason"] == {"exact_duplicate": 1, "near_duplicate": 1}


def synthetic(tmp_path: Path, n: int) -> Path:
    rng = random.Random(0)
    return write_jsonl(tmp_path / "many.jsonl",
                       [chat(korean_text(rng, 40), korean_text(rng, 120)) for _ in range(n)])


def test_same_input_gives_byte_identical_outputs_and_sane_proportions(tmp_path: Path, data_settings) -> None:
    settings = data_settings(synthetic(tmp_path, 1000), val_fraction=0.1, test_fraction=0.2)
    first = prepare.main(settings)
    before = {name: (tmp_path / "out" / name).read_bytes() for name in OUTPUTS}
    second = prepare.main(settings)
    assert {name: (tmp_path / "out" / name).read_bytes() for name in OUTPUTS} == before
    assert first == second
    per_split = first["counts"]["per_split"]
    assert first["counts"]["kept"] == sum(per_split.values()) == 1000
    assert 60 <= per_split["validation"] <= 140 and 160 <= per_split["test"] <= 240
    ids = [r["id"] for r in rows(tmp_path / "out", "train.jsonl")]
    assert ids == sorted(ids)


def test_changing_the_salt_moves_records_between_splits(tmp_path: Path, data_settings) -> None:
    path = synthetic(tmp_path, 200)
    a = prepare.main(data_settings(path))
    b = prepare.main(data_settings(path, split_salt="other"))
    assert a["outputs"]["train"]["sha256"] != b["outputs"]["train"]["sha256"]
    assert a["dataset_sha256"] != b["dataset_sha256"]


def test_manifest_hashes_match_the_files_on_disk(tmp_path: Path, data_settings) -> None:
    path = synthetic(tmp_path, 50)
    result = prepare.main(data_settings(path))
    out = tmp_path / "out"
    assert manifest.read_manifest(out) == json.loads(json.dumps(result))
    for name, info in result["outputs"].items():
        assert info["sha256"] == manifest.sha256_file(out / info["file"])
        assert info["records"] == len(manifest.read_split(out, name))
    assert result["inputs"] == [{"path": path.as_posix(), "source": "many.jsonl",
                                 "sha256": manifest.sha256_file(path), "records": 50}]
    assert result["dataset_sha256"] == manifest.dataset_sha256(result["outputs"])
    assert result["schema_version"] == manifest.SCHEMA_VERSION
    assert result["settings"]["split_salt"] == "changjak-v1"


def test_no_surviving_record_is_a_data_error(tmp_path: Path, data_settings) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", ["nope", {"foo": 1}])
    with pytest.raises(DataError, match="no usable records") as e:
        prepare.main(data_settings(path))
    assert e.value.hint
    assert [r["reason"] for r in rows(tmp_path / "out", "rejects.jsonl")] == ["invalid_json", "unknown_format"]


def test_unusable_settings_are_config_errors(tmp_path: Path, data_settings) -> None:
    path = synthetic(tmp_path, 5)
    with pytest.raises(ConfigError) as e:
        prepare.main(data_settings(path, field_mapping={"q": "question"}, val_fraction=0.5, test_fraction=0.5))
    assert len(e.value.problems) == 2 and "data.field_mapping" in e.value.problems[0]


def test_the_example_field_mapping_config_loads_and_works(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "시 한 편", "context": "겨울", "answer": "눈이 내린다."}])
    settings = Settings.load(EXAMPLE_CONFIG, home=tmp_path / ".changjak",
                             data={"inputs": [str(path)], "out_dir": str(tmp_path / "out")})
    assert settings.data.field_mapping["question"] == "instruction"
    prepare.main(settings)
    [row] = all_kept(tmp_path / "out")
    assert row["meta"]["format"] == "mapped"
    assert row["messages"][1:] == [{"role": "user", "content": "시 한 편\n\n겨울"},
                                   {"role": "assistant", "content": "눈이 내린다."}]


def test_cli_prepares_data_and_fails_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    path = synthetic(tmp_path, 20)
    assert cli.main(["data", "prepare", "--input", str(path), "--out", str(tmp_path / "cli-out")]) == 0
    assert all((tmp_path / "cli-out" / name).is_file() for name in OUTPUTS)
    capsys.readouterr()
    assert cli.main(["data", "prepare", "--input", str(tmp_path / "missing.jsonl"), "--out", "x"]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "missing.jsonl: no such file or directory" in err
