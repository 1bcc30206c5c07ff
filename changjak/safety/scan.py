"""changjak safety scan --input FILE [--format jsonl|tsv|csv|txt] [--field text] --out FILE
changjak safety check "텍스트"

Runs every check of a surface (``--surface``, default ``data``: what a dataset is about to become)
under the active policy (``safety.profile``, ``--tenant``) on each record of FILE and writes one
JSON verdict per record to ``--out``: its index (0-based, header rows not counted), the action,
each category that fired with its score, action and sub-kinds, and the masked text. Nothing in
the output holds PII the policy masks. ``check`` does the same for one string and prints it.
The format follows the file's suffix unless ``--format`` says otherwise; ``--field`` names the
text column (JSONL key, TSV/CSV header); plain text is one record per line.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from changjak.errors import DataError
from changjak.safety.policy import SURFACES, SafetyEngine

if TYPE_CHECKING:
    from changjak.settings import Settings

FORMATS = ("jsonl", "tsv", "csv", "txt")
_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv", ".csv": "csv", ".txt": "txt"}


def file_format(path: Path, fmt: str | None = None) -> str:
    """``fmt``, or the format ``path``'s suffix names; DataError if there is none or no such file."""
    fmt = fmt or _SUFFIXES.get(path.suffix.lower())
    if fmt not in FORMATS:
        raise DataError(f"cannot tell the format of {path}", hint=f"pass --format, one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise DataError(f"no such file: {path}", hint="pass --input with the path of a dataset file")
    return fmt


def records(path: Path, fmt: str | None = None, field: str = "text") -> Iterator[str]:
    """The texts of ``path``, one per record, in order; DataError naming the record that has none."""
    fmt = file_format(path, fmt)
    with path.open(encoding="utf-8", newline="") as f:
        if fmt == "txt":
            yield from (line.rstrip("\r\n") for line in f)
        elif fmt == "jsonl":
            for index, line in enumerate(f):
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: record {index} is not JSON ({e.msg})",
                                    hint="fix that line, or scan it as --format txt") from None
                if not isinstance(value, dict) or not isinstance(value.get(field), str):
                    raise DataError(f"{path}: record {index} has no text field {field!r}",
                                    hint="name the text field with --field")
                yield value[field]
        else:
            reader = csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",")
            if field not in (reader.fieldnames or ()):
                raise DataError(f"{path}: no column {field!r} (columns: {', '.join(reader.fieldnames or ())})",
                                hint="name the text column with --field")
            yield from (row[field] or "" for row in reader)


def verdict_row(engine: SafetyEngine, index: int, text: str, surface: str, tenant: str | None) -> dict[str, Any]:
    verdict = engine.check(text, surface=surface, tenant=tenant)
    summary = verdict.summary()
    return {"index": index, "action": summary["action"], "categories": summary["categories"], "text": verdict.text}


def scan(settings: Settings, path: Path, out: Path, *, fmt: str | None = None, field: str = "text",
         surface: str = "data", tenant: str | None = None) -> Counter[str]:
    """Write one verdict per record of ``path`` to ``out``; returns how many got each action."""
    _check_surface(surface)
    fmt = file_format(path, fmt)
    engine = SafetyEngine.from_settings(settings)
    actions: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")  # a failed scan leaves an older --out as it was
    try:
        with partial.open("w", encoding="utf-8") as f:
            for index, text in enumerate(tqdm(records(path, fmt, field), desc="scanning", unit=" rec", disable=None)):
                row = verdict_row(engine, index, text, surface, tenant)
                actions[row["action"]] += 1
                categories.update(row["categories"].keys())
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    _summary(path, out, engine, actions, categories)
    return actions


def check(settings: Settings, text: str, *, surface: str = "request", tenant: str | None = None) -> dict[str, Any]:
    _check_surface(surface)
    row = verdict_row(SafetyEngine.from_settings(settings), 0, text, surface, tenant)
    print(json.dumps(row, ensure_ascii=False, indent=2))
    return row


def _check_surface(surface: str) -> None:
    if surface not in SURFACES:
        raise DataError(f"unknown surface {surface!r}", hint=f"use one of {', '.join(SURFACES)}")


def _summary(path: Path, out: Path, engine: SafetyEngine, actions: Counter[str], categories: Counter[str]) -> None:
    table = Table(title=f"changjak safety scan {path} → {out} ({engine.settings.profile} policy)", show_header=False)
    for action in ("allow", "flag", "mask", "block"):
        table.add_row(f"records: {action}", str(actions[action]))
    for category, n in sorted(categories.items()):
        table.add_row(f"fired: {category}", str(n))
    if engine.hate is None:
        table.add_row("hate classifier", "not trained: hate not checked")
    Console().print(table)
