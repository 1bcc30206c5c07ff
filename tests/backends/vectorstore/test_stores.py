"""The vector store contract, on the in-process store and on a real embedded Chroma."""

from pathlib import Path

import numpy as np
import pytest

from changjak.backends import vectorstore
from changjak.backends.vectorstore import StoredChunk, collection_name


@pytest.fixture(params=["memory", "chroma"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    store = vectorstore.create(request.param, path=tmp_path / "chroma")
    yield store
    store.close()


def _unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def _chunks(doc: str, n: int) -> list[StoredChunk]:
    return [StoredChunk(f"{doc}#{i}", doc, f"{doc} 본문 {i}", {"n": i, "title": doc}) for i in range(n)]


def test_nearest_first_with_cosine_scores(store):
    store.add("acme", _chunks("a", 2), np.stack([_unit(1, 0, 0), _unit(0, 1, 0)]))
    hits = store.query("acme", _unit(1, 0.1, 0), k=2)
    assert [h.chunk.id for h in hits] == ["a#0", "a#1"]
    assert hits[0].score == pytest.approx(float(_unit(1, 0.1, 0) @ _unit(1, 0, 0)), abs=1e-4)
    assert hits[0].chunk.doc_id == "a" and hits[0].chunk.text == "a 본문 0" and hits[0].chunk.metadata["title"] == "a"


def test_tenants_never_see_each_other(store):
    store.add("acme", _chunks("secret", 1), np.stack([_unit(1, 0, 0)]))
    assert store.query("globex", _unit(1, 0, 0), k=5) == []
    assert store.documents("globex") == {}
    assert store.delete_document("globex", "secret") == 0
    assert [h.chunk.id for h in store.query("acme", _unit(1, 0, 0), k=5)] == ["secret#0"]


def test_delete_and_list_documents_and_upsert_by_id(store):
    store.add("acme", _chunks("a", 3) + _chunks("b", 1), np.stack([_unit(1, 0, i) for i in range(4)]))
    store.add("acme", [StoredChunk("a#0", "a", "새 본문", {"n": 0})], np.stack([_unit(0, 0, 1)]))
    docs = store.documents("acme")
    assert sorted(docs) == ["a", "b"] and [c.id for c in docs["a"]] == ["a#0", "a#1", "a#2"]
    assert docs["a"][0].text == "새 본문"
    assert store.delete_document("acme", "a") == 3
    assert sorted(store.documents("acme")) == ["b"]
    assert store.query("acme", _unit(1, 0, 0), k=0) == []


def test_collection_names_are_safe_for_any_tenant_id():
    names = {collection_name(t) for t in ["acme", "ACME", "한국 회사", "a/b", "*"]}
    assert len(names) == 5 and all(n.startswith("cj_") and n.isascii() and len(n) <= 63 for n in names)


def test_chroma_persists_across_clients(tmp_path: Path):
    first = vectorstore.create("chroma", path=tmp_path / "c")
    first.add("acme", _chunks("a", 1), np.stack([_unit(1, 0)]))
    first.close()
    second = vectorstore.create("chroma", path=tmp_path / "c")
    assert [h.chunk.id for h in second.query("acme", _unit(1, 0), k=1)] == ["a#0"]
