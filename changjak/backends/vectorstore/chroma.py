"""Chroma as the vector store: ``PersistentClient`` on a directory (embedded) or ``HttpClient`` (server).

Collections are made with ``embedding_function=None`` and cosine space: vectors always come from
our embedder, so Chroma never reaches for its default model (which it would download).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from changjak.backends.vectorstore import Hit, StoredChunk, collection_name
from changjak.errors import ConfigError


class ChromaStore:
    def __init__(self, path: str | Path | None = None, url: str | None = None, **_: object) -> None:
        try:
            import chromadb
            from chromadb.config import Settings as ChromaSettings
        except ImportError as exc:
            raise ConfigError("the chroma vector store is not installed", hint="pip install 'changjak[rag]'") from exc
        config = ChromaSettings(anonymized_telemetry=False)
        if url:
            parts = urlparse(url)
            self.client = chromadb.HttpClient(host=parts.hostname or "localhost", port=parts.port or 8000,
                                              ssl=parts.scheme == "https", settings=config)
        elif path:
            Path(path).mkdir(parents=True, exist_ok=True)
            self.client = chromadb.PersistentClient(path=str(path), settings=config)
        else:
            raise ConfigError("the chroma vector store needs a path or a url",
                              hint="set CHANGJAK_RAG__CHROMA_PATH or CHANGJAK_RAG__CHROMA_URL")
        self._collections: dict[str, object] = {}

    def _collection(self, tenant: str):  # noqa: ANN202 - chromadb's Collection
        if tenant not in self._collections:
            self._collections[tenant] = self.client.get_or_create_collection(
                collection_name(tenant), embedding_function=None, metadata={"hnsw:space": "cosine"})
        return self._collections[tenant]

    def add(self, tenant: str, chunks: Sequence[StoredChunk], embeddings: np.ndarray) -> None:
        if not chunks:
            return
        self._collection(tenant).upsert(
            ids=[c.id for c in chunks], documents=[c.text for c in chunks],
            embeddings=np.asarray(embeddings, dtype=np.float32),
            metadatas=[{**c.metadata, "doc_id": c.doc_id} for c in chunks])

    def query(self, tenant: str, embedding: np.ndarray, k: int) -> list[Hit]:
        collection = self._collection(tenant)
        count = collection.count()
        if count == 0 or k <= 0:
            return []
        found = collection.query(query_embeddings=[np.asarray(embedding, dtype=np.float32)], n_results=min(k, count),
                                 include=["documents", "metadatas", "distances"])
        hits = []
        for cid, text, meta, distance in zip(found["ids"][0], found["documents"][0], found["metadatas"][0],
                                             found["distances"][0], strict=True):
            meta = dict(meta or {})
            hits.append(Hit(StoredChunk(cid, str(meta.pop("doc_id", "")), text or "", meta), 1.0 - float(distance)))
        return hits

    def delete_document(self, tenant: str, doc_id: str) -> int:
        collection = self._collection(tenant)
        ids = collection.get(where={"doc_id": doc_id}, include=[])["ids"]
        if ids:
            collection.delete(ids=ids)
        return len(ids)

    def documents(self, tenant: str) -> dict[str, list[StoredChunk]]:
        got = self._collection(tenant).get(include=["documents", "metadatas"])
        docs: dict[str, list[StoredChunk]] = {}
        for cid, text, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True):
            meta = dict(meta or {})
            doc_id = str(meta.pop("doc_id", ""))
            docs.setdefault(doc_id, []).append(StoredChunk(cid, doc_id, text or "", meta))
        return {d: sorted(c, key=lambda c: int(c.metadata.get("n", 0))) for d, c in docs.items()}

    def close(self) -> None:
        self._collections.clear()
