"""Korean PII benchmark: recall, precision and latency of masking, on our fast path and on Presidio.

    nice -n 10 python -m benchmarks.safety_pii          # table on stdout, JSON in benchmarks/results/

The corpus (benchmarks/pii_corpus.py) is generated from a fixed seed: 1,300 sentences holding PII
in varied spellings and 700 full of numbers that are not PII. A gold span is found when a finding
of the same kind covers all of it; a finding that touches no gold span of its kind is a false
positive. "masked" counts gold spans covered by a finding of any kind: what privacy cares about.

Three detectors run over the same sentences:
  fast            changjak.safety.pii.find, the request path
  presidio        changjak.safety.recognizers: our recognizers in an offline AnalyzerEngine,
                  overlaps settled as Presidio's anonymizer settles them (higher score wins)
  presidio_stock  Presidio's own recognizers for Korean (KR_RRN, KR_FRN, KR_BRN, KR_PASSPORT,
                  KR_DRIVER_LICENSE, email, card, IP, phone for region KR), as a baseline
Latency is one call on each of 200 texts of exactly 500 characters cut from the corpus, repeated:
find+mask for the fast path, analyze+anonymize for Presidio. One process, one core.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from benchmarks.pii_corpus import Sample, corpus
from changjak.safety import pii

RESULTS = Path(__file__).parent / "results" / "safety_pii.json"
Spans = list[tuple[str, int, int]]


def evaluate(samples: list[Sample], detect: Callable[[str], Spans], name: str, show: int) -> dict:
    counts = {kind: Counter() for kind in pii.KINDS}
    shown = 0
    for sample in tqdm(samples, desc=f"{name}: accuracy", leave=False):
        found = detect(sample.text)
        errors = []
        for kind, start, end in sample.spans:
            hit = any(k == kind and s <= start and e >= end for k, s, e in found)
            counts[kind]["tp" if hit else "fn"] += 1
            counts[kind]["masked"] += any(s <= start and e >= end for _, s, e in found)
            errors += [] if hit else [f"missed {kind}"]
        for k, s, e in found:
            if not any(kind == k and s < end and e > start for kind, start, end in sample.spans):
                counts[k]["fp"] += 1
                errors.append(f"false {k} {sample.text[s:e]!r}")
        if errors and shown < show:  # synthetic values only: this corpus holds no real person's data
            shown += 1
            print(f"[{name}] {'; '.join(errors)} in {sample.text!r}")
    rows = {kind: _rates(c) for kind, c in counts.items()}
    rows["overall"] = _rates(sum(counts.values(), Counter()))
    return rows


def _rates(c: Counter) -> dict:
    gold, predicted = c["tp"] + c["fn"], c["tp"] + c["fp"]
    return {"recall": round(c["tp"] / gold, 4) if gold else None,
            "precision": round(c["tp"] / predicted, 4) if predicted else None,
            "masked": round(c["masked"] / gold, 4) if gold else None,
            "tp": c["tp"], "fn": c["fn"], "fp": c["fp"]}


def latency(texts: list[str], run: Callable[[str], object], name: str, repeats: int) -> dict:
    timings = []
    for _ in tqdm(range(repeats), desc=f"{name}: latency", leave=False):
        for text in texts:
            start = time.perf_counter()
            run(text)
            timings.append((time.perf_counter() - start) * 1000)
    timings.sort()
    p50, p95 = timings[len(timings) // 2], timings[int(len(timings) * 0.95)]
    return {"p50_ms": round(p50, 3), "p95_ms": round(p95, 3), "calls": len(timings)}


def texts_of(samples: list[Sample], n: int, length: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        text = ""
        while len(text) < length:
            text += rng.choice(samples).text + " "
        texts.append(text[:length])
    return texts


def presidio_detectors() -> dict[str, tuple[Callable[[str], Spans], Callable[[str], object]]]:
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IpRecognizer,
        KrBrnRecognizer,
        KrDriverLicenseRecognizer,
        KrFrnRecognizer,
        KrPassportRecognizer,
        KrRrnRecognizer,
        PhoneRecognizer,
    )

    from changjak.safety import recognizers

    # The stock EmailRecognizer asks tldextract to refresh the public suffix list from the network;
    # offline it falls back to the bundled copy after logging a traceback we do not need to see.
    logging.getLogger("tldextract").setLevel(logging.CRITICAL)
    stock = RecognizerRegistry(
        [KrRrnRecognizer(), KrFrnRecognizer(), KrBrnRecognizer(), KrPassportRecognizer(),
         KrDriverLicenseRecognizer(), EmailRecognizer(supported_language="ko"),
         CreditCardRecognizer(supported_language="ko"), IpRecognizer(supported_language="ko"),
         PhoneRecognizer(supported_language="ko", supported_regions=["KR"])],
        supported_languages=["ko"])
    noop = NoOpNlpEngine([{"lang_code": "ko", "model_name": "noop"}])
    engines = {"presidio": recognizers.analyzer(),
               "presidio_stock": AnalyzerEngine(registry=stock, supported_languages=["ko"], nlp_engine=noop,
                                                default_score_threshold=pii.MIN_SCORE)}

    def spans(engine: AnalyzerEngine) -> Callable[[str], Spans]:
        def detect(text: str) -> Spans:
            kept = []
            for r in sorted(engine.analyze(text, language="ko"), key=lambda r: (-r.score, r.start)):
                if r.entity_type in recognizers.KINDS and all(r.end <= s or r.start >= e for _, s, e in kept):
                    kept.append((recognizers.KINDS[r.entity_type], r.start, r.end))
            return kept
        return detect

    return {name: (spans(engine), lambda text, engine=engine: recognizers.mask(text, engine))
            for name, engine in engines.items()}



def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--positives", type=int, default=1300)
    parser.add_argument("--negatives", type=int, default=700)
    parser.add_argument("--repeats", type=int, default=5, help="latency passes over the 200 texts")
    parser.add_argument("--show-errors", type=int, default=0,
                        help="print this many wrong sentences per detector")
    parser.add_argument("--fast-only", action="store_true", help="skip the Presidio detectors")
    args = parser.parse_args()

    samples = corpus(args.seed, args.positives, args.negatives)
    texts = texts_of(samples, 200, 500, args.seed)
    detectors = {"fast": (lambda t: [(f.kind, f.start, f.end) for f in pii.find(t)], pii.mask)}
    if not args.fast_only:
        detectors |= presidio_detectors()
    report = {"seed": args.seed, "positive_sentences": args.positives, "negative_sentences": args.negatives,
              "gold_spans": sum(len(s.spans) for s in samples), "text_chars": 500, "detectors": {}}
    for name, (detect, run) in detectors.items():
        repeats = args.repeats if name == "fast" else 1
        report["detectors"][name] = {"accuracy": evaluate(samples, detect, name, args.show_errors),
                                     "latency": latency(texts, run, name, repeats)}
    _print(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def _print(report: dict) -> None:
    console = Console()
    for name, result in report["detectors"].items():
        timing = result["latency"]
        table = Table(title=f"{name}: p50 {timing['p50_ms']} ms, p95 {timing['p95_ms']} ms per 500-char text")
        for column in ("kind", "recall", "precision", "masked", "tp", "fn", "fp"):
            table.add_column(column, justify="left" if column == "kind" else "right")
        for kind, row in result["accuracy"].items():
            table.add_row(kind, *(str(row[c]) for c in ("recall", "precision", "masked", "tp", "fn", "fp")))
        console.print(table)
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
