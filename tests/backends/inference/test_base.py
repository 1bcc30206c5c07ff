"""StopScanner: stop strings are cut even when they span deltas, and never emitted."""

from __future__ import annotations

import pytest

from changjak.backends.inference.base import StopScanner


def scan(deltas: list[str], stops: list[str]) -> tuple[list[str], bool]:
    scanner = StopScanner(stops)
    out: list[str] = []
    for delta in deltas:
        text, hit = scanner.feed(delta)
        out.append(text)
        if hit:
            return out, True
    out.append(scanner.flush())
    return out, False


def test_a_stop_string_split_across_deltas_is_cut_and_never_emitted() -> None:
    out, hit = scan(["옛날 옛", "적에 ", "끝", "이었다"], ["끝이"])
    assert hit
    assert "".join(out) == "옛날 옛적에 "
    assert out[2] == ""  # "끝" was held back: it could have been the start of "끝이"


def test_held_text_is_released_when_it_turns_out_not_to_be_a_stop() -> None:
    out, hit = scan(["가나", "다", "마"], ["다라"])
    assert not hit
    assert out == ["가나", "", "다마", ""]


def test_the_earliest_of_several_stops_wins() -> None:
    out, hit = scan(["abcSTOPdefEND"], ["END", "STOP"])
    assert (hit, "".join(out)) == (True, "abc")


def test_without_a_stop_the_held_tail_is_flushed_at_the_end() -> None:
    out, hit = scan(["이야기", "의 끝"], ["끝."])
    assert not hit
    assert out == ["이야기", "의 ", "끝"]


@pytest.mark.parametrize("stops", [[], [""]])
def test_no_stops_means_everything_passes_through(stops: list[str]) -> None:
    assert scan(["a", "b"], stops) == (["a", "b", ""], False)
