"""Find the input files and read raw JSON values from them, each with its file and line.

A ``.jsonl`` file holds one value per line (blank lines are skipped). A ``.json`` file holds one
value, an array of values (each element is a record), or several values one after another.
A line that is not valid JSON becomes a :class:`RawRecord` with ``error`` set, so it is reported
as a reject; a file that cannot be read at all raises :class:`~changjak.errors.DataError`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from changjak.errors import DataError

SUFFIXES = (".json", ".jsonl")
_WS = " \t\r\n"


@dataclass(frozen=True)
class InputFile:
    path: Path
    source: str  # the name in reports and metadata: the file name, or its path when two names clash


@dataclass(frozen=True)
class RawRecord:
    source: str
    line: int
    text: str  # the raw JSON text, for reject excerpts
    value: Any = None
    error: str | None = None  # why the text is not JSON


def discover(inputs: list[Path], out_dir: Path) -> list[InputFile]:
    """The files to read, in the order given; a directory stands for its *.json / *.jsonl files, sorted."""
    files: list[InputFile] = []
    seen: set[Path] = set()
    for given in inputs:
        if given.is_dir():
            if given.resolve() == out_dir.resolve():
                raise DataError(f"{given} is the output directory", hint="pass the raw data directory to --input")
            found = sorted(p for p in given.iterdir() if p.suffix in SUFFIXES and p.is_file())
            if not found:
                raise DataError(f"{given}: no .json or .jsonl files", hint="put JSON/JSONL files there or pass them directly")
            candidates = [InputFile(p, p.name) for p in found]
        elif given.is_file():
            if given.suffix not in SUFFIXES:
                raise DataError(f"{given}: not a .json or .jsonl file", hint="convert it to JSON Lines (.jsonl)")
            candidates = [InputFile(given, given.name)]
        else:
            raise DataError(f"{given}: no such file or directory", hint="check the --input path")
        for f in candidates:
            if f.path.resolve() not in seen:
                seen.add(f.path.resolve())
                files.append(f)
    names = Counter(f.source for f in files)
    return [InputFile(f.path, f.path.as_posix()) if names[f.source] > 1 else f for f in files]


def read(file: InputFile) -> Iterator[RawRecord]:
    """Every raw record in ``file``, in order."""
    try:
        text = file.path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{file.path}: not UTF-8 text (byte {e.start})", hint="re-save the file as UTF-8") from None
    except OSError as e:
        raise DataError(f"{file.path}: cannot be read ({e.strerror})", hint="check the file's permissions") from None
    if file.path.suffix == ".jsonl":
        yield from _read_lines(file.source, text)
    else:
        yield from _read_document(file.source, text)


def _read_lines(source: str, text: str) -> Iterator[RawRecord]:
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.strip(_WS)
        if not line:
            continue
        try:
            yield RawRecord(source, number, line, value=json.loads(line))
        except json.JSONDecodeError as e:
            yield RawRecord(source, number, line, error=f"invalid JSON: {e.msg} at column {e.colno}")


def _read_document(source: str, text: str) -> Iterator[RawRecord]:
    decoder = json.JSONDecoder()
    pos, in_array = _skip(text, 0), False
    line, counted = 1, 0

    def line_at(index: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, index)
        counted = index
        return line

    if text[pos:pos + 1] == "[":
        in_array, pos = True, _skip(text, pos + 1)
    while pos < len(text):
        if in_array and text[pos] == "]":
            pos = _skip(text, pos + 1)
            in_array = False
            continue
        start = line_at(pos)
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            snippet = text[pos:pos + 200].split("\n", 1)[0]
            yield RawRecord(source, e.lineno, snippet,
                            error=f"invalid JSON: {e.msg}; the rest of this file was not read")
            return
        yield RawRecord(source, start, text[pos:end], value=value)
        pos = _skip(text, end)
        if in_array and text[pos:pos + 1] == ",":
            pos = _skip(text, pos + 1)
    if in_array:
        end = len(text.rstrip(_WS))
        yield RawRecord(source, line_at(end), text[max(0, end - 80):end].lstrip(_WS),
                        error="invalid JSON: the array is not closed")


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos
