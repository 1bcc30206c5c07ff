"""INT8 on the CPU for the transformers backend: perplexity and decode speed against bf16 and fp32.

    nice -n 10 .venv/bin/python -m benchmarks.transformers_quant [--base demo] [--runs 3]
    .venv/bin/python -m benchmarks.transformers_quant --base DIR --quick   # a smoke run, tiny sizes

For each of fp32, bf16 (weights packed for oneDNN, as served; and unpacked) and int8 (torch
dynamic quantisation of every nn.Linear but ``down_proj``, fp32 activations)
it measures, with 2 threads, in one process: perplexity on Korean story text (teacher-forced,
the same tokens for each), and tokens/s through ``TransformersBackend`` (batching included,
greedy) with 1 and 8 concurrent requests, medians over ``--runs``. It prints a table and writes
``benchmarks/results/transformers_quant.json``. ``--device cuda`` measures bf16 against
bitsandbytes 8-bit and NF4 on a GPU instead (``transformers_quant-cuda.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import time
from pathlib import Path

from benchmarks.inference import ASKS, STORY
from benchmarks.machine import describe

RESULTS = Path(__file__).parent / "results" / "transformers_quant.json"
# name: (dtype, quantization, prepack); "bf16 unpacked" is bf16 without onednn.pack's packed weights
VARIANTS = {"fp32": ("fp32", "none", True), "bf16": ("bf16", "none", True), "bf16 unpacked": ("bf16", "none", False),
            "int8": ("fp32", "int8", True)}
# --device cuda: bitsandbytes 8-bit and NF4 (compute in the GPU's bf16/fp16) against the plain model
CUDA_VARIANTS = {"bf16": ("auto", "none", False), "int8": ("auto", "int8", False), "nf4": ("auto", "nf4", False)}


def perplexity(backend, text: str) -> float:
    """exp(mean next-token loss) over ``text`` with the backend's own model, computed on a thread
    that ends, as the backend loads (OpenMP workers left on this one would slow its decode thread)."""
    import torch

    from changjak.backends.inference.transformers import on_a_thread_of_its_own

    ids = torch.tensor([backend.tokenizer.encode(text, add_special_tokens=False)],
                       device=next(backend.model.parameters()).device)

    def loss() -> float:
        with torch.inference_mode():
            return float(backend.model(input_ids=ids, labels=ids).loss)

    return math.exp(on_a_thread_of_its_own(loss))


async def throughput(backend, concurrency: int, max_tokens: int) -> float:
    """Completion tokens per second over ``concurrency`` greedy requests started together."""
    from changjak.backends.inference.base import GenerationParams

    async def one(i: int) -> int:
        messages = [{"role": "user", "content": ASKS[i % len(ASKS)]}]
        params = GenerationParams(max_tokens=max_tokens, temperature=0)
        return [c async for c in backend.generate(messages, params)][-1].completion_tokens

    start = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(i) for i in range(concurrency))))
    return tokens / (time.perf_counter() - start)


def measure(model_dir: Path, variant: str, *, runs: int, max_tokens: int, text: str, device: str = "cpu") -> dict:
    from changjak.backends.inference.transformers import TransformersBackend

    dtype, quantization, prepack = (CUDA_VARIANTS if device == "cuda" else VARIANTS)[variant]
    backend = TransformersBackend.load(model_dir, device=device, dtype=dtype, quantization=quantization,
                                       model_id="bench", max_batch_size=8, prepack=prepack)
    row = {"variant": variant, "perplexity": perplexity(backend, text)}
    for n in (1, 8):
        asyncio.run(throughput(backend, n, 4))  # warm-up
        row[f"tps_c{n}"] = statistics.median(asyncio.run(throughput(backend, n, max_tokens)) for _ in range(runs))
    asyncio.run(backend.aclose())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="demo", help="base model source (demo, a directory, a .gguf)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one run, 8 tokens: checks that it works")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: bf16 against bitsandbytes 8-bit and NF4 (pip install bitsandbytes)")
    args = parser.parse_args()

    import torch

    from changjak import base_model
    from changjak.settings import Settings

    torch.set_num_threads(2)
    model_dir = base_model.resolve(Settings.load(base_model={"source": args.base})).path
    runs, max_tokens = (1, 8) if args.quick else (args.runs, 64)
    text = STORY * (1 if args.quick else 4)
    variants = CUDA_VARIANTS if args.device == "cuda" else VARIANTS
    rows = [measure(model_dir, v, runs=runs, max_tokens=max_tokens, text=text, device=args.device) for v in variants]
    ref = {r["variant"]: r for r in rows}["bf16"]
    print(f"{'variant':<14}{'perplexity':>12}{'Δ vs bf16':>11}{'tok/s c1':>10}{'tok/s c8':>10}{'c8 vs bf16':>12}")
    for r in rows:
        r["perplexity_delta_vs_bf16"] = r["perplexity"] - ref["perplexity"]
        r["speed_ratio_c8_vs_bf16"] = r["tps_c8"] / ref["tps_c8"]
        print(f"{r['variant']:<14}{r['perplexity']:>12.3f}{r['perplexity_delta_vs_bf16']:>+11.3f}"
              f"{r['tps_c1']:>10.1f}{r['tps_c8']:>10.1f}{r['speed_ratio_c8_vs_bf16']:>11.2f}x")
    name = RESULTS.stem + ("-cuda" if args.device == "cuda" else "") + (".quick" if args.quick else "") + ".json"
    out = args.out or RESULTS.with_name(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"base": args.base, "runs": runs, "max_tokens": max_tokens, "threads": 2,
                               "machine": describe(threads=2), "rows": rows},
                              ensure_ascii=False, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
