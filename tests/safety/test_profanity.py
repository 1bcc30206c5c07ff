import time
from pathlib import Path

import pytest

from changjak.errors import ConfigError
from changjak.safety.profanity import LEXICON_DIR, Lexicon, check

VARIANTS = Path(__file__).parents[2] / "benchmarks" / "data" / "profanity_variants.tsv"


def _variants(label: str) -> list[str]:
    rows = [line.split("\t") for line in VARIANTS.read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#")]
    return [text for kind, text, _ in rows if kind == label]


@pytest.mark.parametrize("text", ["씨발", "존나", "ㅈㄴ", "시1발", "씨 발"])
def test_what_keyword_filters_miss_is_caught(text):
    assert check(text).flagged


@pytest.mark.parametrize("text", ["1956년은 병신년이었다", "강아지가 새끼를 낳았다", "시발점", "지하철 시발 시간", "수박씨 발라", "병신년 새해 복 많이 받으세요",
                                  "새끼 오리들이 엄마를 따라간다", "십팔 년 동안 기다렸다", "개같이 일했다", "경제개발 5개년 계획",
                                  "껌을 씹다", "아이가 엄마를 졸라 장난감을 샀다"])
def test_benign_look_alikes_pass(text):
    assert not check(text).flagged


def test_obfuscation_set_recall_and_false_positives():
    profane, benign = _variants("profane"), _variants("benign")
    assert len(profane) >= 100
    missed = [t for t in profane if not check(t).flagged]
    assert 1 - len(missed) / len(profane) >= 0.95, missed
    flagged = [t for t in benign if check(t).flagged]
    assert len(flagged) / len(benign) <= 0.05, flagged


def test_every_lexicon_term_is_caught_as_written():
    terms = [line.split("\t")[0] for line in (LEXICON_DIR / "profanity.tsv").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    assert len(terms) > 100
    assert [t for t in terms if not check(t).flagged] == []


def test_matches_point_at_the_original_text():
    text = "아 씨 1 발 진짜, ㅂㅅ같네"
    result = check(text)
    assert [(category, text[s:e]) for category, s, e in result.matches] == [("profanity", "씨 1 발"), ("insult", "ㅂㅅ")]
    assert result.score == 0.75


def test_clean_text_scores_zero():
    result = check("오늘은 비가 와서 집에서 소설을 읽었다.")
    assert (result.flagged, result.matches, result.score) == (False, [], 0.0)


@pytest.mark.parametrize(("text", "flagged"), [
    ("이 새끼가", True), ("고양이 새끼", False),  # start: 이새끼 must begin a word
    ("씹", True), ("씹어 먹어", False),  # word: 씹 alone only
    ("씨 발", True), ("수박씨 발라", False),  # across a space the match must begin a word
    ("씨발 시발점", True),  # an exception only covers what it overlaps
])
def test_position_rules(text, flagged):
    assert check(text).flagged is flagged


def test_a_broken_lexicon_is_reported_line_by_line(tmp_path):
    (tmp_path / "profanity.tsv").write_text("# header\n씨발\tprofanity\tany\n병신\tinsult\n...\tinsult\tany\n", encoding="utf-8")
    (tmp_path / "exceptions.tsv").write_text("시발(점\tunclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        Lexicon.load(tmp_path)
    assert any("profanity.tsv line 3" in p for p in err.value.problems)
    assert any("profanity.tsv line 4" in p and "nothing" in p for p in err.value.problems)
    assert any("exceptions.tsv line 1" in p for p in err.value.problems)


def test_a_custom_lexicon_is_used(tmp_path):
    (tmp_path / "profanity.tsv").write_text("바보\tinsult\tany\n", encoding="utf-8")
    (tmp_path / "exceptions.tsv").write_text("", encoding="utf-8")
    lexicon = Lexicon.load(tmp_path)
    assert check("이 바1보야", lexicon).flagged
    assert not check("씨발", lexicon).flagged


def test_a_missing_lexicon_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="missing"):
        Lexicon.load(tmp_path)


def test_500_characters_check_in_about_a_millisecond():
    prompts = [("주인공은 비 내리는 골목에서 오래된 편지를 발견했다. 시발점이 된 사건은 십팔 년 전이었다. " * 10)[i:i + 500]
               for i in range(50)]
    timings = []
    for prompt in prompts:
        start = time.perf_counter()
        check(prompt)
        timings.append(time.perf_counter() - start)
    assert sorted(timings)[len(timings) // 2] < 0.005  # measured ~1 ms; 5 ms leaves room for a busy CI core
