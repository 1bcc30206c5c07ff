"""Korean hate and offensive speech: a character n-gram logistic regression, scored in numpy.

    clf = HateClassifier.load(ensure_model("/work/shared/data", ".changjak/safety/hate"))
    clf.score("여자는 집에서 애나 봐라")  # probability-like score in [0, 1]
    clf.predict("오늘 날씨 좋네요")         # score >= the threshold chosen on BEEP! dev

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
                 threshold: float, card: dict | None = None) -> None:
        self.index = {g: i for i, g in enumerate(ngrams)}
        self.coef = np.asarray(coef, dtype=np.float64)
        self.idf = np.asarray(idf, dtype=np.float64)
        self.bias = float(bias)
        self.threshold = float(threshold)
        self.card = card or {}

    @classmethod
    def load(cls, path: str | Path = DEFAULT_MODEL_DIR) -> HateClassifier:
        """Load ``model.npz`` and ``card.json`` from a directory written by ``train_hate``."""
        path = Path(path)
        model, card = path / MODEL_FILE, path / CARD_FILE
        if not model.is_file() or not card.is_file():
            raise ConfigError(f"no hate-speech model in {path}",
                              hint="train one: python -m changjak.safety.train_hate --data DATA --out " + str(path))
        with np.load(model, allow_pickle=False) as arrays:
            meta = json.loads(card.read_text(encoding="utf-8"))
            return cls(arrays["ngrams"].tolist(), arrays["coef"], arrays["idf"], float(arrays["bias"]),
                       meta["threshold"], meta)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path / MODEL_FILE, ngrams=np.array(list(self.index)), coef=self.coef.astype(np.float32),
                            idf=self.idf.astype(np.float32), bias=np.float64(self.bias))
        card = {**self.card, "threshold": self.threshold}
        (path / CARD_FILE).write_text(json.dumps(card, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    def decision(self, text: str) -> float:
        """The logistic regression's margin (log-odds) for ``text``."""
        counts = Counter(features(text))
        pairs = [(self.index[g], c) for g, c in counts.items() if g in self.index]
        if not pairs:
            return self.bias
        idx = np.fromiter((i for i, _ in pairs), dtype=np.int64, count=len(pairs))
        tf = 1.0 + np.log(np.fromiter((c for _, c in pairs), dtype=np.float64, count=len(pairs)))
        x = tf * self.idf[idx]
        return float(x @ self.coef[idx] / math.sqrt(x @ x)) + self.bias

    def score(self, text: str) -> float:
        return 1.0 / (1.0 + math.exp(-self.decision(text)))

    def predict(self, text: str) -> bool:
        return self.score(text) >= self.threshold


def ensure_model(data_dir: str | Path, out_dir: str | Path = DEFAULT_MODEL_DIR) -> Path:
    """``out_dir`` holding a trained model, training it from ``data_dir`` first if it is missing."""
    out_dir = Path(out_dir)
    if not (out_dir / MODEL_FILE).is_file() or not (out_dir / CARD_FILE).is_file():
        from changjak.safety.train_hate import train

        train(Path(data_dir), out_dir)
    return out_dir
