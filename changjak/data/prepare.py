"""Turn raw JSON/JSONL into versioned, deduplicated, PII-masked chat data.

    changjak data prepare --input examples/data --out .changjak/data

Reads every record with its file and line, validates it and converts it to chat messages
(formats.py, text normalised on the way), checks its length, runs the safety policy's ``data``
checks (changjak.safety.policy: Korean PII masked, records it blocks rejected as ``safety``,
flags counted in the manifest), drops exact then near duplicates before splitting (so no duplicate leaks
across splits), assigns train/validation/test by hash and writes ``train.jsonl``,
``validation.jsonl``, ``test.jsonl``, ``rejects.jsonl`` and ``manifest.json`` to
``settings.data_dir``. Every record not kept is in ``rejects.jsonl`` with its reason; the same
input and settings give byte-identical files.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from changjak.data import dedupe, formats, ingest, manifest, split
from changjak.data.normalize import normalize_text
from changjak.errors import ConfigError, DataError
from changjak.safety import pii
from changjak.safety.policy import SafetyEngine, load_hate_model
from changjak.settings import DataSettings, Settings

EXCERPT_CHARS = 80


@dataclass
class Example:
    key: str  # sha256 of the normalised, masked conversation
    messages: list[dict[str, str]]
    source: str
    line: int
    format: str
    genre: str | None
    raw: str
    pii: dict[str, int] = field(default_factory=dict)  # PII masked, per kind
    flagged: dict[str, int] = field(default_factory=dict)  # messages the safety policy flagged, per category

    @property
    def id(self) -> str:
        return self.key[:16]

    def row(self) -> dict[str, Any]:
        meta = {"source": self.source, "line": self.line, "format": self.format, "genre": self.genre}
        return {"id": self.id, "messages": self.messages, "meta": meta}


def main(settings: Settings) -> dict[str, Any]:
    """Prepare the data in ``settings.data.inputs`` into ``settings.data_dir``; returns the manifest."""
    cfg = settings.data
    _check(cfg)
    out = settings.data_dir
    files = ingest.discover(list(cfg.inputs), out)
    out.mkdir(parents=True, exist_ok=True)

    engine = _safety(settings)
    examples: list[Example] = []
    rejects: list[dict[str, Any]] = []
    read: Counter[str] = Counter()
    records = (raw for f in files for raw in ingest.read(f))
    for raw in tqdm(records, desc="reading", unit=" rec", disable=None):
        read[raw.source] += 1
        try:
            examples.append(_example(raw, cfg, engine))
        except formats.Invalid as e:
            rejects.append(_reject(raw.source, raw.line, raw.text, e.reason, e.detail))

    kept = _dedupe(examples, cfg.near_duplicate_threshold, rejects)
    if not kept:
        manifest.write_jsonl(out / manifest.REJECTS, rejects)
        raise DataError(f"no usable records in {len(files)} input file(s); {len(rejects)} rejected "
                        f"(see {out / manifest.REJECTS})", hint="fix the records listed in rejects.jsonl")
    result = _write(settings, files, read, kept, rejects)
    _summary(result, out)
    return result


def _check(cfg: DataSettings) -> None:
    problems = [f"CHANGJAK_DATA__FIELD_MAPPING (data.field_mapping): {src!r} -> {dst!r} is not one of "
                + ", ".join(sorted(formats.FIELDS)) for src, dst in cfg.field_mapping.items()
                if dst not in formats.FIELDS]
    if cfg.val_fraction + cfg.test_fraction >= 1:
        problems.append("data.val_fraction + data.test_fraction must leave something for training (< 1)")
    if cfg.min_chars > cfg.max_chars:
        problems.append("data.min_chars must not exceed data.max_chars")
    if problems:
        raise ConfigError(problems)


def _safety(settings: Settings) -> SafetyEngine:
    """The policy's engine for training text; ``data.mask_pii: false`` lets PII through (flagged)."""
    safety = settings.safety
    if not settings.data.mask_pii:
        safety = safety.model_copy(update={"actions": {**safety.actions, "pii": "flag"}})
    return SafetyEngine(safety, load_hate_model(settings.safety_hate_model_dir))


def _example(raw: ingest.RawRecord, cfg: DataSettings, engine: SafetyEngine) -> Example:
    if raw.error is not None:
        raise formats.Invalid("invalid_json", raw.error)
    converted = formats.convert(raw.value, cfg.field_mapping, cfg.system_prompt)
    messages = converted.messages
    turns = [len(m["content"]) for m in messages if m["role"] != "system"]
    if min(turns) < cfg.min_chars:
        raise formats.Invalid("too_short", f"a turn has {min(turns)} characters; data.min_chars is {cfg.min_chars}")
    if sum(turns) > cfg.max_chars:
        raise formats.Invalid("too_long", f"{sum(turns)} characters; data.max_chars is {cfg.max_chars}")
    counts: Counter[str] = Counter()
    flagged: Counter[str] = Counter()
    for m in messages:
        verdict = engine.check(m["content"], surface="data")
        if verdict.blocked:
            raise formats.Invalid("safety", f"the safety policy blocks it ({', '.join(verdict.blocked_by)})")
        m["content"] = verdict.text
        for d in verdict.decisions:
            if d.category == "pii" and d.action == "mask":
                counts.update(d.detail)
            else:
                flagged[d.category] += 1
    return Example(dedupe.exact_key(messages), messages, raw.source, raw.line, converted.format,
                   converted.genre, raw.text, dict(counts), dict(flagged))


def _reject(source: str, line: int, text: str, reason: str, detail: str) -> dict[str, Any]:
    excerpt = pii.mask(normalize_text(text)).text
    if len(excerpt) > EXCERPT_CHARS:
        excerpt = excerpt[:EXCERPT_CHARS] + "…"
    return {"file": source, "line": line, "reason": reason, "detail": detail, "excerpt": excerpt}


def _dedupe(examples: list[Example], threshold: float, rejects: list[dict[str, Any]]) -> list[Example]:
    first: dict[str, Example] = {}
    unique: list[Example] = []
    for ex in examples:
        if (kept := first.get(ex.key)) is not None:
            rejects.append(_reject(ex.source, ex.line, ex.raw, "exact_duplicate",
                                   f"same as {kept.id} ({kept.source}:{kept.line})"))
        else:
            first[ex.key] = ex
            unique.append(ex)
    # The shared system prompt is left out: it would make every pair of short records look alike.
    texts = ["\n".join(m["content"] for m in ex.messages if m["role"] != "system") for ex in unique]
    near = dedupe.near_duplicates(texts, threshold)
    for i, (k, similarity) in near.items():
        rejects.append(_reject(unique[i].source, unique[i].line, unique[i].raw, "near_duplicate",
                               f"Jaccard {similarity:.2f} with {unique[k].id} ({unique[k].source}:{unique[k].line})"))
    return [ex for i, ex in enumerate(unique) if i not in near]


def _write(settings: Settings, files: list[ingest.InputFile], read: Counter[str], kept: list[Example],
           rejects: list[dict[str, Any]]) -> dict[str, Any]:
    cfg, out = settings.data, settings.data_dir
    by_split: dict[str, list[Example]] = {name: [] for name in split.SPLITS}
    for ex in kept:
        by_split[split.assign(ex.id, cfg.split_salt, cfg.val_fraction, cfg.test_fraction)].append(ex)
    outputs = {name: manifest.write_jsonl(out / f"{name}.jsonl", [ex.row() for ex in sorted(examples, key=lambda e: e.key)])
               for name, examples in by_split.items()}
    order = {f.source: i for i, f in enumerate(files)}
    rejects.sort(key=lambda r: (order[r["file"]], r["line"], r["reason"]))
    rejected_by_source = Counter(r["file"] for r in rejects)
    pii_masked: Counter[str] = Counter()
    flagged: Counter[str] = Counter()
    for ex in kept:
        pii_masked.update(ex.pii)
        flagged.update(ex.flagged)
    result = {
        "schema_version": manifest.SCHEMA_VERSION,
        "dataset_sha256": manifest.dataset_sha256(outputs),
        "counts": {
            "read": sum(read.values()),
            "kept": len(kept),
            "rejected": len(rejects),
            "rejected_by_reason": dict(Counter(r["reason"] for r in rejects)),
            "per_source": {f.source: {"read": read[f.source], "kept": read[f.source] - rejected_by_source[f.source],
                                      "rejected": rejected_by_source[f.source]} for f in files},
            "per_genre": dict(Counter(ex.genre or "none" for ex in kept)),
            "per_split": {name: len(examples) for name, examples in by_split.items()},
        },
        "pii_masked": dict(pii_masked),
        "safety_flagged": dict(flagged),
        "safety_profile": settings.safety.profile,
        "inputs": [{"path": f.path.as_posix(), "source": f.source, "sha256": manifest.sha256_file(f.path),
                    "records": read[f.source]} for f in files],
        "outputs": outputs,
        "rejects": manifest.write_jsonl(out / manifest.REJECTS, rejects),
        "settings": cfg.model_dump(mode="json"),
    }
    manifest.write_manifest(out, result)
    return result


def _summary(result: dict[str, Any], out: Path) -> None:
    counts = result["counts"]
    table = Table(title=f"changjak data prepare → {out}", show_header=False)
    table.add_row("records read", str(counts["read"]))
    table.add_row("kept", " / ".join(f"{name} {n}" for name, n in counts["per_split"].items()))
    for reason, n in sorted(counts["rejected_by_reason"].items()):
        table.add_row(f"rejected: {reason}", str(n))
    for kind, n in sorted(result["pii_masked"].items()):
        table.add_row(f"PII masked: {kind}", str(n))
    for category, n in sorted(result["safety_flagged"].items()):
        table.add_row(f"flagged ({result['safety_profile']} policy): {category}", str(n))
    table.add_row("dataset sha256", result["dataset_sha256"][:16])
    console = Console()
    console.print(table)
    fractions = {"validation": result["settings"]["val_fraction"], "test": result["settings"]["test_fraction"]}
    for name, fraction in fractions.items():
        if fraction > 0 and counts["per_split"][name] == 0:
            console.print(f"[yellow]warning: the {name} split is empty; add records or change data.split_salt")
