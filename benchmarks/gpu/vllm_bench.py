"""vLLM on a CUDA GPU: raw ``AsyncLLM`` against our vllm backend, in-process and through the gateway.

    pip install 'changjak[vllm]'        # on the GPU machine, with this checkout installed
    python -m benchmarks.gpu.vllm_bench --model /path/to/qwen2-0.5b-dir [--requests 1000] [--out DIR]

``--model`` is a Hugging Face-format directory (config, safetensors, tokenizer with a chat
template): the demo model's bf16 copy (``.changjak/models/qwen2.5-coder-0.5b-instruct-q4_k_m-*``)
copied over, or any Qwen2-0.5B-Instruct directory; without it the offline demo model is resolved
here (needs the ``changjak[demo-model]`` wheels). Each phase runs in its own process, one after
the other, so each has the whole GPU:

- ``raw``: ``AsyncLLM.generate`` for ``--requests`` short completions, ``--concurrency`` at a time;
- ``backend``: the same through :class:`VllmBackend.generate` (our mapping, no HTTP);
- ``gateway``: the same through ``changjak serve``'s app in a uvicorn process, httpx clients streaming.

It reports requests/s and completion tokens/s for each, the ratio gateway / raw (the issue's
target: >= 0.9) and how close requests/s gets to the plan's 1000, and writes
``vllm_bench.json`` to ``--out`` (default ``$OUT``, else ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.inference import ASKS, MODEL, Gateway, stream_one


async def drive(one, requests: int, concurrency: int) -> dict:
    """Run ``one(i)`` (returning completion tokens) ``requests`` times, ``concurrency`` at once."""
    gate = asyncio.Semaphore(concurrency)

    async def bounded(i: int) -> int:
        async with gate:
            return await one(i)

    await asyncio.gather(*(one(i) for i in range(min(concurrency, 32))))  # warm-up: graphs, caches
    start = time.perf_counter()
    tokens = await asyncio.gather(*(bounded(i) for i in range(requests)))
    seconds = time.perf_counter() - start
    return {"requests": requests, "seconds": seconds, "requests_per_s": requests / seconds,
            "completion_tps": sum(tokens) / seconds}


async def phase_raw(model: Path, args: argparse.Namespace) -> dict:
    from vllm import AsyncEngineArgs, SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from changjak.backends.inference.vllm import _engine_class, encode_chat
    from changjak.base_model import load_tokenizer

    engine = _engine_class().from_engine_args(AsyncEngineArgs(model=str(model), disable_log_stats=True))
    tokenizer = load_tokenizer(model)
    prompts = [encode_chat(tokenizer, [{"role": "user", "content": a}]) for a in ASKS]
    sampling = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, output_kind=RequestOutputKind.DELTA)

    async def one(i: int) -> int:
        tokens = 0
        async for out in engine.generate({"prompt_token_ids": prompts[i % len(prompts)]}, sampling, uuid.uuid4().hex):
            tokens += len(out.outputs[0].token_ids)
        return tokens

    try:
        return await drive(one, args.requests, args.concurrency)
    finally:
        engine.shutdown()


async def phase_backend(model: Path, args: argparse.Namespace) -> dict:
    from changjak.backends.inference import GenerationParams, create

    backend = create("vllm", base_path=model, adapter_dir=None, device="cuda", dtype="auto", model_id=MODEL)
    params = GenerationParams(max_tokens=args.max_tokens, temperature=0.0)

    async def one(i: int) -> int:
        chunks = [c async for c in backend.generate([{"role": "user", "content": ASKS[i % len(ASKS)]}], params)]
        return chunks[-1].completion_tokens

    try:
        return await drive(one, args.requests, args.concurrency)
    finally:
        await backend.aclose()


async def phase_gateway(model: Path, args: argparse.Namespace) -> dict:
    import httpx

    env = {**os.environ, "CHANGJAK_API_KEYS": "cj-bench-" + secrets.token_hex(12), "CHANGJAK_CACHE__ENABLED": "false",
           "CHANGJAK_SERVE__LOG_FORMAT": "text", "CHANGJAK_HOME": tempfile.mkdtemp(prefix="changjak-bench-")}
    gateway = Gateway("vllm", model, env)
    try:
        await gateway.wait()
        limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
        async with httpx.AsyncClient(base_url=gateway.url, headers={"Authorization": f"Bearer {gateway.key}"},
                                     limits=limits, timeout=httpx.Timeout(600)) as http:
            async def one(i: int) -> int:
                return (await stream_one(http, ASKS[i % len(ASKS)], args.max_tokens))[2]

            return await drive(one, args.requests, args.concurrency)
    finally:
        gateway.close()


PHASES = {"raw": phase_raw, "backend": phase_backend, "gateway": phase_gateway}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a Hugging Face-format model directory (default: the demo model)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=32, help="short completions, as the plan's 1000 req/s")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parents[1] / "results"))
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:  # a child: one phase, its figures as the last line of stdout
        print(json.dumps(asyncio.run(PHASES[args.phase](args.model, args))))
        return
    try:
        import vllm
    except ImportError:
        sys.exit("vllm is not installed here: pip install 'changjak[vllm]' on a CUDA machine, then run this again")
    model = args.model
    if model is None:
        from changjak import base_model
        from changjak.settings import Settings

        model = base_model.resolve(Settings.load(base_model={"source": "demo"})).path
    results: dict = {"vllm": vllm.__version__, "model": str(model), "requests": args.requests,
                     "concurrency": args.concurrency, "max_tokens": args.max_tokens}
    for phase in PHASES:
        print(f"{phase} ...", flush=True)
        cmd = [sys.executable, "-m", "benchmarks.gpu.vllm_bench", "--phase", phase, "--model", str(model),
               "--requests", str(args.requests), "--concurrency", str(args.concurrency),
               "--max-tokens", str(args.max_tokens), "--out", args.out]
        done = subprocess.run(cmd, capture_output=True, text=True)
        lines = done.stdout.strip().splitlines()
        results[phase] = json.loads(lines[-1]) if done.returncode == 0 and lines else \
            {"error": (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]}
        print(f"  {results[phase]}", flush=True)
    raw, gw = results["raw"].get("completion_tps"), results["gateway"].get("completion_tps")
    results["gateway_over_raw"] = gw / raw if raw and gw else None
    results["target_gateway_over_raw_0_9"] = None if results["gateway_over_raw"] is None \
        else results["gateway_over_raw"] >= 0.9
    results["gateway_requests_per_s_of_1000"] = (results["gateway"].get("requests_per_s") or 0) / 1000
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vllm_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, dict)}, indent=2))
    print(f"wrote {out / 'vllm_bench.json'}")


if __name__ == "__main__":
    main()
