"""Train the Korean hate/offensive classifier on BEEP! train and pick its threshold on BEEP! dev.

    python -m changjak.safety.train_hate --data /work/shared/data --out .changjak/safety/hate

Reads ``korean-hate-speech/train.tsv`` and ``dev.tsv`` under ``--data`` (BEEP!, Moon et al. 2020,
CC BY-SA 4.0) and nothing else: APEACH is the held-out benchmark (``benchmarks/safety_hate.py``) and
is never read here. ``hate`` and ``offensive`` comments are the positive class. The model is
scikit-learn's TF-IDF + logistic regression over :func:`changjak.safety.hate.features`; the threshold
is the lowest dev score that keeps the false-positive rate on dev's ``none`` comments at or under
``--max-fpr``, so the model flags as much as it can while rarely flagging clean text. Writes
``model.npz`` and ``card.json`` (data hashes, licence, hyper-parameters, threshold, dev metrics) in a
few seconds on one core. The trained model is a derived work of BEEP! and carries CC BY-SA 4.0.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

from changjak.errors import ConfigError, DataError, TrainingError
from changjak.safety.hate import NGRAM_SIZES, HateClassifier, features

BEEP_DIR = "korean-hate-speech"
C = 2.0  # inverse L2 strength; 0.5-8 moved dev AUC by < 0.01 (1-4-grams, min_df 2 beat 1-3 and 1-5)
MIN_DF = 2  # n-grams seen once are mostly typos and names; this keeps about 60k of 200k
LICENCE = ("CC BY-SA 4.0: derived from BEEP! (Moon, Cho and Lee, 2020, "
           "https://github.com/kocohub/korean-hate-speech); see changjak/safety/LICENSE-DATA.md")


def load_beep(path: Path, limit: int | None = None) -> tuple[list[str], np.ndarray]:
    """Comments and labels (True for hate or offensive) from a BEEP! ``.tsv`` file."""
    if not path.is_file():
        raise DataError(f"{path} not found", hint="pass --data pointing at the folder holding korean-hate-speech/")
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows or not {"comments", "hate"} <= set(rows[0]):
        raise DataError(f"{path} has no 'comments' and 'hate' columns", hint="use BEEP!'s labeled/*.tsv unchanged")
    rows = rows[:limit]
    return [r["comments"] for r in rows], np.array([r["hate"] != "none" for r in rows])


def pick_threshold(scores: np.ndarray, labels: np.ndarray, max_fpr: float) -> float:
    """The lowest threshold whose false-positive rate on the negatives is at most ``max_fpr``."""
    negatives = np.sort(scores[~labels])[::-1]
    allowed = int(np.floor(max_fpr * len(negatives)))  # negatives that may score at or above it
    if allowed >= len(negatives):
        return float(scores.min())
    return float(np.nextafter(negatives[allowed], np.inf))


def metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    flagged = scores >= threshold
    tp, fp = int((flagged & labels).sum()), int((flagged & ~labels).sum())
    precision = tp / max(tp + fp, 1)
    recall = tp / max(int(labels.sum()), 1)
    return {"precision": round(precision, 4), "recall": round(recall, 4),
            "f1": round(2 * precision * recall / max(precision + recall, 1e-9), 4),
            "fpr": round(fp / max(int((~labels).sum()), 1), 4), "auc": round(float(roc_auc_score(labels, scores)), 4)}


def train(data_dir: Path, out_dir: Path, *, max_fpr: float = 0.05, limit: int | None = None) -> dict:
    """Fit on train, choose the threshold on dev, save to ``out_dir``; returns the model card."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError as exc:
        raise TrainingError("scikit-learn is needed to train the hate classifier",
                            hint="pip install 'changjak[safety]'") from exc
    if not 0.0 <= max_fpr < 1.0:
        raise ConfigError(f"max_fpr must be in [0, 1), got {max_fpr}", hint="pass e.g. --max-fpr 0.05")
    started = time.perf_counter()
    train_path, dev_path = data_dir / BEEP_DIR / "train.tsv", data_dir / BEEP_DIR / "dev.tsv"
    texts, labels = load_beep(train_path, limit)
    dev_texts, dev_labels = load_beep(dev_path)
    if labels.all() or not labels.any():
        raise DataError(f"{train_path} holds one class only", hint="train on the full BEEP! train.tsv")
    grams = [features(t) for t in tqdm(texts, desc="features", unit="text", leave=False)]
    vectorizer = TfidfVectorizer(analyzer=lambda g: g, min_df=MIN_DF, sublinear_tf=True, dtype=np.float64)
    model = LogisticRegression(C=C, class_weight="balanced", max_iter=3000)
    model.fit(vectorizer.fit_transform(grams), labels)

    clf = HateClassifier(vectorizer.get_feature_names_out().tolist(), model.coef_[0], vectorizer.idf_,
                         float(model.intercept_[0]), threshold=0.5)
    dev_scores = np.array([clf.score(t) for t in dev_texts])
    clf.threshold = pick_threshold(dev_scores, dev_labels, max_fpr)
    clf.card = {
        "name": "changjak-hate-ko",
        "task": "binary: hate or offensive (BEEP! 'hate'/'offensive') vs none",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "licence": LICENCE,
        "data": {"train": _describe(train_path, len(texts)), "dev": _describe(dev_path, len(dev_texts))},
        "model": {"features": f"char {min(NGRAM_SIZES)}-{max(NGRAM_SIZES)}-grams per normalised word, "
                              "TF-IDF (sublinear tf, L2)", "classifier": "logistic regression, balanced classes",
                  "C": C, "min_df": MIN_DF, "n_features": len(clf.index)},
        "threshold": clf.threshold,
        "threshold_rule": f"lowest dev threshold with false-positive rate <= {max_fpr}",
        "dev_metrics": metrics(dev_scores, dev_labels, clf.threshold),
        "train_seconds": round(time.perf_counter() - started, 2),
    }
    clf.save(out_dir)
    return clf.card


def _describe(path: Path, rows: int) -> dict:
    return {"path": str(path), "rows": rows, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m changjak.safety.train_hate", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding korean-hate-speech/{train,dev}.tsv")
    parser.add_argument("--out", type=Path, required=True, help="where model.npz and card.json go")
    parser.add_argument("--max-fpr", type=float, default=0.05, help="false-positive rate allowed on dev")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N rows only (quick runs)")
    args = parser.parse_args(argv)
    card = train(args.data, args.out, max_fpr=args.max_fpr, limit=args.limit)
    print(f"saved {args.out}: threshold {card['threshold']:.4f}, dev {card['dev_metrics']}, "
          f"{card['train_seconds']} s")
    return card


if __name__ == "__main__":
    main()
