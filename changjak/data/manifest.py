"""The prepared data directory on disk, for the stages that read it (train, eval).

    <data_dir>/train.jsonl  validation.jsonl  test.jsonl   {"id", "messages", "meta"} per line
    <data_dir>/rejects.jsonl                                {"file", "line", "reason", "detail", "excerpt"}
    <data_dir>/manifest.json                                counts, hashes, settings used

``dataset_sha256`` in the manifest names this version of the data: it is the hash of the split
files' hashes, so the same input and settings always give the same value.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from changjak.data.split import SPLITS
from changjak.errors import DataError

if TYPE_CHECKING:
    from mlflow.data.pandas_dataset import PandasDataset

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
_HINT = "run `changjak data prepare` first"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Write one JSON object per line (UTF-8, not ASCII-escaped); returns {file, sha256, records}."""
    count = 0
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return {"file": path.name, "sha256": sha256_file(path), "records": count}


def dataset_sha256(outputs: dict[str, dict[str, Any]]) -> str:
    """One hash over the split files' hashes, in split order."""
    lines = "".join(f"{split}:{outputs[split]['sha256']}\n" for split in SPLITS)
    return hashlib.sha256(lines.encode("ascii")).hexdigest()


def write_manifest(data_dir: Path, manifest: dict[str, Any]) -> Path:
    path = data_dir / MANIFEST
    path.write_text(json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_manifest(data_dir: Path) -> dict[str, Any]:
    """The manifest of a prepared data directory; DataError if there is none."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"no prepared data in {data_dir} ({MANIFEST} is missing)", hint=_HINT)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise DataError(f"{path} is not valid JSON", hint=_HINT) from None


def read_split(data_dir: Path, split: str) -> list[dict[str, Any]]:
    """The records of one split: dicts with ``id``, ``messages`` and ``meta``."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}", hint="use one of " + ", ".join(SPLITS))
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"no {split} split in {data_dir} ({path.name} is missing)", hint=_HINT)
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def to_mlflow_dataset(data_dir: Path, split: str = "train") -> PandasDataset:
    """One split as an ``mlflow.data`` dataset, for ``mlflow.log_input(ds, context="training")``.

    The digest is the data version (``dataset_sha256``), so every split of one preparation shares
    it and a run's inputs say exactly which data it saw.
    """
    import mlflow.data
    import pandas as pd

    manifest = read_manifest(data_dir)
    rows = read_split(data_dir, split)
    frame = pd.DataFrame({
        "id": [r["id"] for r in rows],
        "messages": [json.dumps(r["messages"], ensure_ascii=False) for r in rows],
        "source": [r["meta"]["source"] for r in rows],
        "format": [r["meta"]["format"] for r in rows],
        "genre": [r["meta"]["genre"] or "" for r in rows],
    })
    source = str((Path(data_dir) / f"{split}.jsonl").resolve())
    with warnings.catch_warnings():  # MLflow registers its local source twice and warns it is ambiguous
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        return mlflow.data.from_pandas(frame, source=source, name=f"changjak-{split}",
                                       digest=manifest["dataset_sha256"][:16])
