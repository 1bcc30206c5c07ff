"""``changjak rag ingest|search``: the RAG index from the command line (the same index the server uses).

    changjak rag ingest --tenant acme docs/*.md notes.jsonl   # .txt/.md: one document per file
    changjak rag search --tenant acme "민지의 고향은?" --top-k 3

A JSONL file holds one document per line: ``{"text": ..., "id": ..., "title": ...}``. A document the
safety policy refuses is reported with its file and line and the rest go on; nothing is half-stored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import track

from changjak.errors import APIError, DataError

if TYPE_CHECKING:
    from changjak.settings import Settings


def _documents(path: Path) -> Iterator[tuple[str, dict]]:
    """``(where, {text, id?, title?})`` for each document in ``path``."""
    if not path.is_file():
        raise DataError(f"{path}: no such file", hint="pass .txt, .md or .jsonl files")
    if path.suffix == ".jsonl":
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{path}:{number}", {"error": f"not JSON ({e.msg})"}
                continue
            yield f"{path}:{number}", record if isinstance(record, dict) else {"error": "not a JSON object"}
    else:
        doc_id = re.sub(r"[^A-Za-z0-9._:-]", "_", path.stem)[:128] or None
        yield str(path), {"text": path.read_text(encoding="utf-8"), "id": doc_id, "title": path.stem}


def ingest(settings: Settings, tenant: str, paths: Sequence[Path]) -> int:
    """Ingest every document in ``paths`` for ``tenant``; the number refused."""
    from changjak.rag import RagIndex
    from changjak.safety.policy import SafetyEngine

    console = Console(stderr=True)
    index = RagIndex.from_settings(settings, SafetyEngine.from_settings(settings))
    docs = [d for p in paths for d in _documents(p)]
    stored = refused = chunks = 0
    try:
        for where, doc in track(docs, description="ingesting", console=console):
            try:
                if "error" in doc or not isinstance(doc.get("text"), str):
                    raise DataError(doc.get("error", "no 'text' field"))
                result = index.ingest(tenant, doc["text"], doc_id=doc.get("id"), title=doc.get("title"),
                                      source=where)
            except (APIError, DataError) as e:
                refused += 1
                console.print(f"[red]refused[/] {where}: {e.message}")
                continue
            stored, chunks = stored + 1, chunks + result.chunks
    finally:
        index.close()
    console.print(f"stored {stored} documents ({chunks} chunks) for tenant {tenant!r}; refused {refused}")
    return refused


def search(settings: Settings, tenant: str, query: str, top_k: int | None = None) -> None:
    from changjak.rag import RagIndex
    from changjak.safety.policy import SafetyEngine

    index = RagIndex.from_settings(settings, SafetyEngine.from_settings(settings))
    try:
        for hit in index.search(tenant, query, k=top_k):
            print(json.dumps({"doc_id": hit.chunk.doc_id, "chunk_id": hit.chunk.id, "score": round(hit.score, 4),
                              "text": hit.chunk.text}, ensure_ascii=False))
    finally:
        index.close()
