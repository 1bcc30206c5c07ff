"""Reading the prepared data directory, and its MLflow dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from changjak.data import manifest
from changjak.errors import DataError

ROW = {"id": "abc", "messages": [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": "반가워"}],
       "meta": {"source": "a.jsonl", "line": 1, "format": "chat", "genre": "novel"}}


def prepared(data_dir: Path) -> dict:
    data_dir.mkdir(parents=True, exist_ok=True)
    outputs = {name: manifest.write_jsonl(data_dir / f"{name}.jsonl", [ROW] if name == "train" else [])
               for name in ("train", "validation", "test")}
    result = {"schema_version": manifest.SCHEMA_VERSION, "outputs": outputs,
              "dataset_sha256": manifest.dataset_sha256(outputs)}
    manifest.write_manifest(data_dir, result)
    return result


def test_write_jsonl_reports_the_hash_of_the_bytes_on_disk(tmp_path: Path) -> None:
    info = manifest.write_jsonl(tmp_path / "x.jsonl", [ROW, ROW])
    body = (tmp_path / "x.jsonl").read_bytes()
    assert info == {"file": "x.jsonl", "sha256": manifest.sha256_file(tmp_path / "x.jsonl"), "records": 2}
    assert "안녕".encode() in body and body.count(b"\n") == 2


def test_dataset_hash_changes_with_any_split(tmp_path: Path) -> None:
    outputs = prepared(tmp_path / "d")["outputs"]
    changed = {**outputs, "test": {**outputs["test"], "sha256": "0" * 64}}
    assert manifest.dataset_sha256(outputs) == manifest.dataset_sha256(dict(outputs))
    assert manifest.dataset_sha256(changed) != manifest.dataset_sha256(outputs)


def test_read_manifest_and_split_round_trip(tmp_path: Path) -> None:
    written = prepared(tmp_path / "d")
    assert manifest.read_manifest(tmp_path / "d") == json.loads(json.dumps(written))
    assert manifest.read_split(tmp_path / "d", "train") == [ROW]
    assert manifest.read_split(tmp_path / "d", "test") == []


def test_missing_data_says_to_run_prepare(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        manifest.read_manifest(tmp_path)
    assert e.value.hint == "run `changjak data prepare` first"
    with pytest.raises(DataError) as e:
        manifest.read_split(tmp_path, "validation")
    assert e.value.hint == "run `changjak data prepare` first"
    with pytest.raises(DataError, match="unknown split"):
        manifest.read_split(tmp_path, "dev")


def test_mlflow_dataset_names_the_split_and_the_data_version(tmp_path: Path) -> None:
    written = prepared(tmp_path / "d")
    ds = manifest.to_mlflow_dataset(tmp_path / "d", "train")
    assert ds.name == "changjak-train"
    assert ds.digest == written["dataset_sha256"][:16]
    assert ds.source.to_dict()["uri"].endswith("train.jsonl")
    assert ds.df["id"].tolist() == ["abc"]
    assert json.loads(ds.df["messages"][0]) == ROW["messages"]
