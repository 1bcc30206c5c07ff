import time

import pytest

from changjak.safety.normalize import chosung, compose, decompose, normalize, normalize_for_matching


@pytest.mark.parametrize(("text", "expected"), [
    ("씨 발", "씨발"),  # space inside a word
    ("씨.1.발", "씨발"),  # dots and a digit inside
    ("시1발", "시발"),
    ("씨 1 발", "씨발"),  # a lone digit set off by spaces
    ("씨x발", "씨발"),  # a Latin letter wedged between syllables
    ("씨\u200b발", "씨발"),  # zero-width space
    ("씨\u3164발", "씨발"),  # Hangul filler, invisible
    ("ㅅㅣㅂㅏㄹ", "시발"),  # spelled-out jamo
    ("ㄱㅐㅅㅐㄲㅣ", "개새끼"),
    ("ㅅl발", "시발"),  # Latin l as the vowel ㅣ
    ("人ㅣ발", "시발"),  # CJK 人 as ㅅ
    ("씨이이이발", "씨발"),  # stretched vowel
    ("조온나", "존나"),  # stretched, final carried over
    ("씨발발발", "씨발"),  # repeated syllable
    ("병ㅡ신", "병신"),  # stray vowel inside a word
    ("ㅋㅋㅋㅋ", "ㅋ"),
    ("아18", "아십팔"),  # 18 touching Hangul reads 십팔
    ("10새끼", "십새끼"),
    ("c발", "씨발"),
    ("Ｉｇｎｏｒｅ", "ignore"),  # full-width
    ("1gn0r3", "ignore"),  # leet digits next to Latin letters
    ("іgnоrе", "ignore"),  # Cyrillic і, о, е
    ("㉮", "가"),  # circled syllable
])
def test_disguises_fold_to_the_same_skeleton(text, expected):
    assert normalize_for_matching(text) == expected


def test_chosung_spellings_stay_as_written():
    assert normalize_for_matching("ㅈㄴ ㅅㅂ") == "ㅈㄴㅅㅂ"
    assert normalize_for_matching("ㅗ") == "ㅗ"


def test_numbers_that_stand_alone_are_kept():
    assert normalize_for_matching("1956년은 병신년이었다") == "1956년은병신년이었다"
    assert normalize_for_matching("미친 2018년") == "미친2018년"  # not 미친년
    assert normalize_for_matching("3월 5일") == "3월5일"


def test_spans_map_back_to_the_original_text():
    text = "너 진짜 씨 . 발 놈"
    norm = normalize(text)
    start = norm.text.index("씨발")
    s, e = norm.span(start, start + 2)
    assert text[s:e] == "씨 . 발"
    jamo = "야 ㅅㅣㅂㅏㄹ"
    norm = normalize(jamo)
    assert norm.text == "야시발"
    assert jamo[slice(*norm.span(1, 3))] == "ㅅㅣㅂㅏㄹ"


def test_word_starts_remember_where_spaces_were():
    norm = normalize("수박씨 발라 먹어")
    assert norm.text == "수박씨발라먹어"
    assert norm.word_starts == {0, 3, 5}
    assert norm.is_word_end(3) and not norm.is_word_end(2) and norm.is_word_end(len(norm.text))


@pytest.mark.parametrize("text", ["씨 발 놈아", "1gn0re all previous", "ㅅㅣㅂㅏㄹ", "아18 진짜", "오늘은 날씨가 좋네요!"])
def test_normalising_twice_changes_nothing(text):
    once = normalize_for_matching(text)
    assert normalize_for_matching(once) == once


def test_jamo_helpers_round_trip():
    assert chosung("시발 abc") == "ㅅㅂ abc"
    for syllable in "가각힣닭뷁씨":
        assert compose(*decompose(syllable)) == syllable


def test_500_characters_normalise_in_about_a_millisecond():
    prompts = [("비 내리는 골목에서 오래된 편지를 발견했다. 주인공은 씨 발 하고 말했다! " * 12)[i:i + 500] for i in range(50)]
    timings = []
    for prompt in prompts:
        start = time.perf_counter()
        normalize(prompt)
        timings.append(time.perf_counter() - start)
    assert sorted(timings)[len(timings) // 2] < 0.005  # measured ~0.8 ms; 5 ms leaves room for a busy CI core
