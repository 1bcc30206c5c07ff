"""Finding input files and reading raw records with their line numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from changjak.data import ingest
from changjak.errors import DataError
from tests.data.conftest import write_jsonl


def records(path: Path) -> list[ingest.RawRecord]:
    return list(ingest.read(ingest.InputFile(path, path.name)))


def test_directories_give_their_json_files_sorted_and_skip_others(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("b.jsonl", "a.json", "notes.txt", "c.jsonl"):
        (raw / name).write_text("{}", encoding="utf-8")
    extra = write_jsonl(tmp_path / "extra.jsonl", [{}])
    files = ingest.discover([extra, raw, raw / "a.json"], tmp_path / "out")
    assert [f.source for f in files] == ["extra.jsonl", "a.json", "b.jsonl", "c.jsonl"]


def test_clashing_file_names_are_told_apart_by_path(tmp_path: Path) -> None:
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        write_jsonl(tmp_path / sub / "data.jsonl", [{}])
    files = ingest.discover([tmp_path / "x", tmp_path / "y"], tmp_path / "out")
    assert [f.source for f in files] == [(tmp_path / s / "data.jsonl").as_posix() for s in ("x", "y")]


@pytest.mark.parametrize(("setup", "message"), [
    (lambda p: p / "missing.jsonl", "no such file or directory"),
    (lambda p: (p / "data.csv").write_text("a,b") and p / "data.csv", "not a .json or .jsonl file"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no .json or .jsonl files"),
    (lambda p: (p / "out").mkdir() or (p / "out" / "x.jsonl").write_text("{}") and p / "out", "output directory"),
])
def test_unusable_inputs_raise_data_error_with_a_hint(tmp_path: Path, setup, message: str) -> None:
    with pytest.raises(DataError, match=message) as e:
        ingest.discover([setup(tmp_path)], tmp_path / "out")
    assert e.value.hint


def test_jsonl_lines_keep_their_numbers_and_bad_json_is_a_record(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [{"n": 1}, "", "{broken", "  ", {"n": 2}])
    got = records(path)
    assert [(r.line, r.value, r.error is None) for r in got] == [(1, {"n": 1}, True), (3, None, False),
                                                                  (5, {"n": 2}, True)]
    assert got[1].text == "{broken" and "invalid JSON" in got[1].error


def test_json_array_elements_carry_the_line_they_start_on(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('[\n  {"n": 1},\n  {"n":\n    2},\n  3\n]\n', encoding="utf-8")
    assert [(r.line, r.value) for r in records(path)] == [(2, {"n": 1}), (3, {"n": 2}), (5, 3)]


def test_json_single_object_and_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text('\ufeff\n{"n": 1}\n', encoding="utf-8")
    assert [(r.line, r.value) for r in records(path)] == [(2, {"n": 1})]


@pytest.mark.parametrize(("text", "line"), [('[{"n": 1},\n {"n": }\n]', 2), ('[{"n": 1},\n {"n": 2}\n', 2)])
def test_broken_json_document_ends_with_an_error_record(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    got = records(path)
    assert got[0].value == {"n": 1}
    assert got[-1].error is not None and got[-1].line == line


def test_non_utf8_file_raises_data_error(tmp_path: Path) -> None:
    path = tmp_path / "euc.jsonl"
    path.write_bytes('{"text": "한국어"}'.encode("euc-kr"))
    with pytest.raises(DataError, match="not UTF-8") as e:
        records(path)
    assert e.value.hint == "re-save the file as UTF-8"
