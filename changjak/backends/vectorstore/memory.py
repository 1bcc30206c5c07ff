"""A vector store in one process's memory: exact cosine search with numpy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from changjak.backends.vectorstore import Hit, StoredChunk


class MemoryStore:
    def __init__(self, **_: object) -> None:
        self._tenants: dict[str, dict[str, tuple[StoredChunk, np.ndarray]]] = {}

    def add(self, tenant: str, chunks: Sequence[StoredChunk], embeddings: np.ndarray) -> None:
        rows = self._tenants.setdefault(tenant, {})
        for chunk, vector in zip(chunks, np.asarray(embeddings, dtype=np.float32), strict=True):
            rows[chunk.id] = (chunk, vector)

    def query(self, tenant: str, embedding: np.ndarray, k: int) -> list[Hit]:
        rows = list(self._tenants.get(tenant, {}).values())
        if not rows or k <= 0:
            return []
        scores = np.stack([v for _, v in rows]) @ np.asarray(embedding, dtype=np.float32)
        best = np.argsort(-scores, kind="stable")[:k]
        return [Hit(rows[i][0], float(scores[i])) for i in best]

    def delete_document(self, tenant: str, doc_id: str) -> int:
        rows = self._tenants.get(tenant, {})
        gone = [cid for cid, (chunk, _) in rows.items() if chunk.doc_id == doc_id]
        for cid in gone:
            del rows[cid]
        return len(gone)

    def documents(self, tenant: str) -> dict[str, list[StoredChunk]]:
        docs: dict[str, list[StoredChunk]] = {}
        for chunk, _ in self._tenants.get(tenant, {}).values():
            docs.setdefault(chunk.doc_id, []).append(chunk)
        return {d: sorted(c, key=lambda c: int(c.metadata.get("n", 0))) for d, c in docs.items()}

    def close(self) -> None:
        self._tenants.clear()
