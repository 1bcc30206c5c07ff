import pytest

from changjak.rag.chunk import chunk, sentences


def test_sentences_split_at_korean_sentence_ends_and_keep_the_ending():
    text = "민지는 웃었다. 정말이야? 그래요! 끝…  다음\n새 줄"
    assert sentences(text) == ["민지는 웃었다.", "정말이야?", "그래요!", "끝…", "다음", "새 줄"]


def test_a_number_with_a_decimal_point_is_not_a_sentence_end():
    assert sentences("값은 3.14입니다. 끝.") == ["값은 3.14입니다.", "끝."]


def test_chunks_hold_whole_sentences_within_the_limit_and_overlap_by_one():
    text = " ".join(f"{i}번째 문장입니다." for i in range(30))
    chunks = chunk(text, max_chars=60, overlap=1)
    assert all(len(c) <= 60 for c in chunks)
    assert all(c.endswith("입니다.") for c in chunks)
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.startswith(a.rsplit(" ", 2)[-2])  # the last sentence of a chunk opens the next
    assert "".join(chunks).count("29번째") >= 1


def test_paragraphs_end_a_chunk_and_long_sentences_are_cut_at_spaces():
    assert chunk("하나.\n\n둘. 셋.", max_chars=100) == ["하나.", "둘. 셋."]
    long = "가나다 " * 50
    pieces = chunk(long, max_chars=40, overlap=0)
    assert all(len(p) <= 40 for p in pieces) and all(w == "가나다" for p in pieces for w in p.split())


def test_text_is_nfc_normalised_and_tiny_limits_are_refused():
    decomposed = "\u1100\u1161 문장."  # 가 as jamo
    assert chunk(decomposed) == ["가 문장."]
    with pytest.raises(ValueError, match="max_chars"):
        chunk("x", max_chars=5)
