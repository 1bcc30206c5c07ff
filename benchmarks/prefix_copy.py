"""Time to first token of requests that arrive together and share a system prompt, on the llama.cpp
backend: prefixes copied between sequences (changjak) against per-slot prompt reuse only (what
llama.cpp's own server does with ``cache_prompt``), in the same run, on the demo GGUF.

    nice -n -15 .venv/bin/python -m benchmarks.prefix_copy [--runs 3] [--concurrency 8]

Each run opens a fresh backend (empty KV cache), answers one request (one slot now holds the
system prompt), then sends ``--concurrency`` requests at once that start with the same fenced
system prompt as the gateway sends (``changjak.safety.fencing``, the default creative-writing
prompt, lengthened to a realistic few hundred tokens) and differ in the user turn. Without copies
every other slot prefills the whole system prompt again; with them, only the user turns. A second
wave follows, when every slot has kept a prefix: there both should be equal. Figures are medians
over ``--runs``; the table goes to stdout, the JSON to ``benchmarks/results/prefix_copy.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results" / "prefix_copy.json"
SYSTEM = ("당신은 한국어 창작을 돕는 글쓰기 도우미입니다. 사용자가 쓰는 소설, 시, 수필, 대본을 함께 다듬습니다. "
          "문장은 자연스럽고 따뜻하게, 인물의 감정과 장면의 감각을 자세히 묘사합니다. ") * 5


async def wave(backend, system: dict, n: int, first: int) -> list[float]:
    from changjak.backends.inference import GenerationParams

    async def one(i: int) -> float:
        start, ttft = time.perf_counter(), None
        messages = [system, {"role": "user", "content": f"{i}번째 부탁: 바다에 관한 짧은 시를 써 줘."}]
        async for chunk in backend.generate(messages, GenerationParams(max_tokens=8, temperature=0)):
            if chunk.text and ttft is None:
                ttft = time.perf_counter() - start
        return ttft if ttft is not None else time.perf_counter() - start

    return list(await asyncio.gather(*(one(first + i) for i in range(n))))


async def measure(gguf: Path, copies: bool, concurrency: int) -> dict:
    from changjak.backends.inference import llamacpp, llamacpp_batching
    from changjak.safety.fencing import fence_system_prompt, new_canary
    from changjak.settings import get_settings

    llamacpp_batching.COPY_MIN = 32 if copies else 1 << 30
    opts = get_settings().serve.llamacpp.model_copy(update={"parallel": concurrency})
    backend = llamacpp.LlamaCppBackend.load(gguf, model_id="bench", options=opts, max_queue=64)
    try:
        system = {"role": "system", "content": fence_system_prompt(SYSTEM, new_canary())}
        await wave(backend, system, 1, 0)
        cold = await wave(backend, system, concurrency, 100)
        warm = await wave(backend, system, concurrency, 200)
        return {"system_tokens": len(backend._encode([system])), "copied": backend.batcher.copied,
                "cold_p50_s": statistics.median(cold), "cold_max_s": max(cold),
                "warm_p50_s": statistics.median(warm), "warm_max_s": max(warm)}
    finally:
        await backend.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from changjak.base_model import _demo_gguf
    from changjak.settings import Settings

    gguf = _demo_gguf(Settings.load().models_dir)  # assembled from the demo-model wheels on first use
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                     "model": gguf.name, "concurrency": args.concurrency, "runs": args.runs, "systems": {}}
    for name, copies in (("per-slot reuse only (llama-server cache_prompt)", False), ("changjak: copy across sequences", True)):
        runs = [asyncio.run(measure(gguf, copies, args.concurrency)) for _ in range(args.runs)]
        results["systems"][name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        results["systems"][name]["runs"] = runs
    table = Table(title=f"TTFT of {args.concurrency} requests arriving together, same system prompt (s, median of {args.runs})")
    for column in ("system", "system tokens", "cold p50", "cold max", "warm p50", "warm max", "copies"):
        table.add_column(column)
    for name, r in results["systems"].items():
        table.add_row(name, f"{r['system_tokens']:.0f}", f"{r['cold_p50_s']:.2f}", f"{r['cold_max_s']:.2f}",
                      f"{r['warm_p50_s']:.2f}", f"{r['warm_max_s']:.2f}", f"{r['copied']:.0f}")
    base, ours = results["systems"].values()
    results["cold_p50_ratio"] = base["cold_p50_s"] / ours["cold_p50_s"]
    console = Console(width=140)
    console.print(table)
    console.print(f"cold wave p50: {results['cold_p50_ratio']:.1f}x faster with copies")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
