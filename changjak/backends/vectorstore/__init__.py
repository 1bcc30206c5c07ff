"""Vector stores by name: ``create("chroma", path=...)``; one collection per tenant.

    chroma   Chroma: a persistent client on a local directory, or a Chroma server by URL
    memory   numpy in one process: the fake beside the real one, for tests

Every call names its tenant, and a store keeps tenants apart (Chroma: one collection each), so
one tenant's documents can never come back in another tenant's search. The store never embeds:
callers pass vectors from a :mod:`changjak.backends.embedding` embedder, so Chroma's own default
embedding function (which downloads a model) is never used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from changjak.backends import load_class


@dataclass(frozen=True)
class StoredChunk:
    id: str  # "<doc_id>#<n>"
    doc_id: str
    text: str
    metadata: dict[str, str | int | float | bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    chunk: StoredChunk
    score: float  # cosine similarity, 1 = same direction


@runtime_checkable
class VectorStore(Protocol):
    def add(self, tenant: str, chunks: Sequence[StoredChunk], embeddings: np.ndarray) -> None:
        """Store ``chunks`` (replacing any with the same id) with one embedding row each."""
        ...

    def query(self, tenant: str, embedding: np.ndarray, k: int) -> list[Hit]:
        """The ``k`` chunks of ``tenant`` nearest to ``embedding``, best first."""
        ...

    def delete_document(self, tenant: str, doc_id: str) -> int:
        """Remove every chunk of ``doc_id``; the number removed (0: no such document here)."""
        ...

    def documents(self, tenant: str) -> dict[str, list[StoredChunk]]:
        """``doc_id -> its chunks`` for ``tenant``, chunks in order."""
        ...

    def close(self) -> None: ...


VECTORSTORES = {
    "chroma": "changjak.backends.vectorstore.chroma:ChromaStore",
    "memory": "changjak.backends.vectorstore.memory:MemoryStore",
}


def create(name: str, **kwargs: Any) -> VectorStore:
    """Build the store registered as ``name`` (its library is imported only now)."""
    return load_class(VECTORSTORES, name, kind="vector store")(**kwargs)


def collection_name(tenant: str) -> str:
    """A store-safe name for ``tenant``'s collection (tenant ids may hold any characters)."""
    return "cj_" + hashlib.sha256(tenant.encode()).hexdigest()[:32]
