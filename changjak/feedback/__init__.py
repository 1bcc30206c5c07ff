"""changjak feedback export --out FILE [--tenant T]

Feedback on the model's answers: users rate an answer (-1/+1 or 1–5 stars) and may send the
answer as it should have been (a correction) and a comment, through ``POST /v1/feedback``
(``changjak.serve.routes.feedback``). Every text goes through the safety policy's ``feedback``
checks first (PII masked, attacks refused). Reviewers (scope ``feedback:review``) accept or reject
it; accepted corrections that carry their conversation export as SFT chat records, one JSON object
per line, ready for ``changjak data prepare``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from changjak.settings import Settings


def main_export(settings: Settings, out: Path, *, tenant: str | None = None) -> tuple[int, int]:
    """Write accepted corrections to ``out`` as ``{"messages": [...]}`` lines; (written, skipped)."""
    from changjak import db
    from changjak.feedback import store

    engine = db.connect(settings)
    written = skipped = 0
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as f:
            for row in store.accepted_corrections(engine, tenant=tenant):
                messages = json.loads(row["messages"]) if row["messages"] else None
                if not messages:
                    skipped += 1  # a correction without its conversation cannot teach anything
                    continue
                if messages[-1].get("role") == "assistant":
                    messages = messages[:-1]  # the answer being corrected
                record = {"messages": [*messages, {"role": "assistant", "content": row["correction"]}],
                          "source": f"feedback:{row['id']}"}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                written += 1
    finally:
        engine.dispose()
    print(f"wrote {written} corrections to {out}" + (f" ({skipped} without a conversation skipped)"
                                                      if skipped else ""))
    return written, skipped
