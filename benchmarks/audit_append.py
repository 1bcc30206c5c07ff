"""What an audit commit costs the event loop on the embedded SQLite file: SQLite checkpointing its
write-ahead log inside commits (its default) against the audit writer's own checkpoints, in the same
run, interleaved.

    nice -n -15 .venv/bin/python -m benchmarks.audit_append [--records 3000] [--runs 3]

Each run appends ``--records`` one-record batches through ``changjak.audit.store.Appender`` (what
the audit writer does on the event loop at one client) to a fresh database file. With SQLite's
default, the commit that takes the log past 1,000 pages copies it back and waits for two fsyncs;
with ``own_checkpoints`` no commit does, and ``Appender.checkpoint()`` is called every
``CHECKPOINT_EVERY`` commits, as the writer's thread would, timed apart. Per append: CPU and wall
time (the loop's), and the longest single append (a stall every request in flight shares). Medians
over ``--runs``; the table goes to stdout, the JSON to ``benchmarks/results/audit_append.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.machine import describe

RESULTS = Path(__file__).parent / "results" / "audit_append.json"
MODES = {"sqlite checkpoints in commits": False, "changjak: own checkpoints": True}


def entry(i: int) -> dict:
    return {"request_id": f"req_{i:032x}", "time": time.time(), "method": "POST", "route": "/v1/chat/completions",
            "key_prefix": "cj_bench", "principal": "bench", "tenant": "bench", "model_version": "1",
            "decisions": {"cache": "hit", "limits": {"rpm": "ok"}, "safety": {"request": [], "answer": []}},
            "status": 200, "outcome": "complete", "latency_ms": 1.0, "prompt_tokens": 0, "completion_tokens": 0}


def one_run(records: int, own: bool) -> dict:
    from changjak import db
    from changjak.audit import store
    from changjak.settings import Settings

    with tempfile.TemporaryDirectory(prefix="changjak-audit-") as tmp:
        engine = db.connect(Settings(home=Path(tmp)))
        appender = store.Appender(engine, own_checkpoints=own)
        clean = store.Cleaner(str)
        rows = [store.clean_entry(entry(i), clean) for i in range(records)]
        cpu = wall = longest = checkpoints = 0.0
        for row in rows:
            c, w = time.thread_time(), time.perf_counter()
            appender([row], wait_ms=2)
            cpu += time.thread_time() - c
            took = time.perf_counter() - w
            wall, longest = wall + took, max(longest, took)
            if appender.checkpoint_due:
                w = time.perf_counter()
                appender.checkpoint()
                checkpoints += time.perf_counter() - w
        log = os.path.getsize(engine.url.database + "-wal")
        appender.close()
        engine.dispose()
    return {"append_cpu_us": cpu / records * 1e6, "append_wall_us": wall / records * 1e6,
            "longest_append_ms": longest * 1e3, "checkpoint_thread_us": checkpoints / records * 1e6,
            "log_bytes_at_end": log}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=3000, help="one-record appends per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per mode (interleaved); medians are kept")
    parser.add_argument("--smoke", action="store_true", help="do not write benchmarks/results/")
    args = parser.parse_args()
    console = Console(width=120)
    runs: dict[str, list[dict]] = {name: [] for name in MODES}
    for _ in range(args.runs):
        for name, own in MODES.items():
            runs[name].append(one_run(args.records, own))
    rows = {name: {k: round(statistics.median(r[k] for r in got), 2) for k in got[0]} for name, got in runs.items()}
    table = Table(title=f"one-record audit appends on SQLite, {args.records} per run, median of {args.runs}")
    for column in ("mode", "CPU µs", "wall µs", "longest ms", "checkpoint µs (thread)", "log at end KiB"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for name, row in rows.items():
        table.add_row(name, f"{row['append_cpu_us']:.0f}", f"{row['append_wall_us']:.0f}",
                      f"{row['longest_append_ms']:.1f}", f"{row['checkpoint_thread_us']:.0f}",
                      f"{row['log_bytes_at_end'] / 1024:.0f}")
    console.print(table)
    base, ours = rows.values()
    ratio = {"append_wall": round(ours["append_wall_us"] / base["append_wall_us"], 2),
             "longest_append": round(ours["longest_append_ms"] / base["longest_append_ms"], 2)}
    console.print(f"changjak / sqlite default: wall per append x{ratio['append_wall']}, "
                  f"longest append x{ratio['longest_append']}")
    if not args.smoke:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({
            "machine": describe(),
            "records_per_run": args.records, "runs": args.runs, "medians": rows, "ratios": ratio,
            "all_runs": runs}, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
