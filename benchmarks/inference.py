"""Inference speed through the HTTP gateway against the raw engines, on the offline demo model.

    nice -n 10 .venv/bin/python -m benchmarks.inference [--backends transformers,llamacpp] [--runs 3]
    .venv/bin/python -m benchmarks.inference --quick      # a smoke run: tiny sizes, one run, minutes
    .venv/bin/python -m benchmarks.inference --quick --backends fake   # the gateway alone, seconds

For each backend it measures, in the same run, on the same prompts, with 2 threads:

- the raw engine in a child process: transformers ``generate`` one request at a time and 8
  prompts hand-batched, or llama-cpp-python ``Llama.create_chat_completion`` (streamed);
- the gateway: ``changjak serve``'s app with that backend in a real uvicorn child process, and
  streaming httpx clients: decode tokens/s at batch 1, prefill tokens/s at 256 prompt tokens,
  time to first token p50/p95 at concurrency 8 with 256-token prompts (all 8 sent at once, and
  under a steady closed-loop load of 8 clients: ``closed_loop``), aggregate tokens/s at
  concurrency 1, 4, 8, 16 (medians over ``--runs``; TTFT percentiles over every run's samples).

The runs go round by round (the raw engine once, then the gateway once), and each gateway/raw
ratio is the median of the ratios within a round: on a shared VM the speed of a decode step
drifts by tens of per cent within minutes. Every gateway request asks for ``min_tokens`` =
``max_tokens``, so its replies are as long as the raw engines' (``min_new_tokens``).

Then it checks the issue's targets and writes ``benchmarks/results/inference.json``. A backend
whose engine is not installed is skipped with one line. Decode rates count the tokens after the
first (usage from the server, or the engine's own count) over the time after the first token.
vLLM needs a GPU: ``benchmarks/gpu/vllm_bench.py`` measures it there.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.machine import describe

RESULTS = Path(__file__).parent / "results" / "inference.json"
QUICK_RESULTS = RESULTS.with_name("inference-quick.json")  # a smoke run never overwrites real figures
THREADS = 2
MODEL = "changjak-writer"
ENGINES = {"transformers": "transformers", "llamacpp": "llama_cpp", "vllm": "vllm", "fake": "changjak"}
STORY = ("바닷가 작은 마을에 등대지기 노인이 살았다. 그는 매일 밤 불을 밝히며 먼 바다에서 돌아오지 않은 "
         "아들을 기다렸다. 어느 겨울, 낯선 소녀가 편지 한 통을 들고 마을에 나타났다. ")
ASKS = ["등대지기 노인과 소녀의 이야기를 길게 이어서 써 줘.", "비 오는 서울의 밤을 배경으로 단편 소설을 써 줘.",
        "우주 정거장에서 홀로 남은 요리사의 일기를 써 줘.", "조선 시대 도깨비가 나오는 옛날이야기를 들려줘.",
        "고양이의 눈으로 본 이사 가는 날을 묘사해 줘.", "첫눈 오는 날 헤어진 친구를 다시 만나는 장면을 써 줘.",
        "시간을 되돌리는 시계를 주운 학생의 이야기를 써 줘.", "사막을 건너는 상인들의 노래를 시로 써 줘."]


@dataclass(frozen=True)
class Sizes:
    max_tokens: int = 64
    prompt_tokens: int = 256
    concurrency: tuple[int, ...] = (1, 4, 8, 16)
    ttft_concurrency: int = 8
    batch: int = 8  # the hand-batched transformers reference
    runs: int = 3


CLOSED_LOOP_REQUESTS = 3  # per client in the steady-load TTFT measure
QUICK = Sizes(max_tokens=8, prompt_tokens=32, concurrency=(1, 2), ttft_concurrency=2, batch=2, runs=1)


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def long_prompt(tokenizer, n_tokens: int) -> str:
    """A user message of exactly ``n_tokens`` tokens of Korean prose (the template adds a few)."""
    ids = tokenizer(STORY * (n_tokens // 20 + 2), add_special_tokens=False)["input_ids"][:n_tokens]
    return tokenizer.decode(ids) + "\n이 이야기를 이어서 써 줘."


_NUMBERS = itertools.count(1)


def unique(text: str) -> str:
    """``text`` with a numbered start, so no prefix cache in a backend serves its prefill."""
    return f"{next(_NUMBERS)}번 이야기. {text}"


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def percentile(xs: list[float], q: float) -> float | None:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else None


# --- raw engines (each in its own child process) --------------------------------------------

def raw_transformers(model_dir: Path, sizes: Sizes, long_text: str) -> dict:
    import torch

    from changjak.base_model import load_causal_lm, load_tokenizer
    from changjak.train.device import pick_dtype

    torch.set_num_threads(THREADS)
    model = load_causal_lm(model_dir, device="cpu", dtype=pick_dtype("cpu", "auto")).eval()
    tok = load_tokenizer(model_dir, padding_side="left")

    def timed(texts: list[str], n: int) -> tuple[float, int]:
        enc = tok.apply_chat_template([chat(t) for t in texts], add_generation_prompt=True, padding=True,
                                      return_dict=True, return_tensors="pt")
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
        return time.perf_counter() - start, enc["input_ids"].shape[1]

    timed(ASKS[:1], 2)  # warm-up
    n, decode, sequential, prefill, batched = sizes.max_tokens, [], [], [], []
    for run in range(sizes.runs):
        ask = ASKS[run % len(ASKS)]
        first, whole = timed([ask], 1)[0], timed([ask], n)[0]
        decode.append((n - 1) / (whole - first))
        sequential.append(n / whole)
        seconds, prompt_tokens = timed([unique(long_text)], 1)
        prefill.append(prompt_tokens / seconds)
        batched.append(sizes.batch * n / timed([ASKS[i % len(ASKS)] for i in range(sizes.batch)], n)[0])
    return {"decode_tps_b1": median(decode), "sequential_tps": median(sequential),
            "prefill_tps": median(prefill), f"batched_{sizes.batch}_tps": median(batched)}


def raw_llamacpp(gguf: Path, sizes: Sizes, long_text: str) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_threads=THREADS, n_ctx=2048, n_batch=512, verbose=False)

    def stream(text: str, n: int) -> tuple[float, float, int]:
        start, first, tokens, finish = time.perf_counter(), None, 0, None
        for chunk in llm.create_chat_completion(chat(text), max_tokens=n, temperature=0.0, stream=True):
            choice = chunk["choices"][0]
            if choice["delta"].get("content"):
                first, tokens = first or time.perf_counter(), tokens + 1
            finish = choice.get("finish_reason") or finish
        # A chunk is a token, except that bytes of an unfinished character wait for the next one.
        tokens = n if finish == "length" else tokens
        return (first or time.perf_counter()) - start, time.perf_counter() - start, tokens

    stream(ASKS[0], 2)  # warm-up
    decode, sequential, prefill, ttft = [], [], [], []
    for run in range(sizes.runs):
        first, whole, tokens = stream(ASKS[run % len(ASKS)], sizes.max_tokens)
        ttft.append(first)
        if tokens > 1:
            decode.append((tokens - 1) / (whole - first))
            sequential.append(tokens / whole)
        llm.reset()  # no prompt cache across runs: prefill is measured cold
        start = time.perf_counter()
        reply = llm.create_chat_completion(chat(unique(long_text)), max_tokens=1, temperature=0.0)
        prefill.append(reply["usage"]["prompt_tokens"] / (time.perf_counter() - start))
        llm.reset()
    return {"decode_tps_b1": median(decode), "sequential_tps": median(sequential), "prefill_tps": median(prefill),
            "ttft_b1_s": median(ttft)}


# --- the gateway: `changjak serve`'s app in a uvicorn child, streaming httpx clients -------------

def serve(backend: str, model_path: Path, port: int) -> None:
    """The child: the API app over ``backend`` on 127.0.0.1:``port`` (key in CHANGJAK_API_KEYS)."""
    import torch
    import uvicorn

    from changjak.backends import inference
    from changjak.serve.app import create_app
    from changjak.settings import get_settings

    torch.set_num_threads(THREADS)
    settings = get_settings()  # the backends read their own knobs (serve.llamacpp, serve.vllm) from it too
    engine = inference.create(backend, base_path=model_path, adapter_dir=None, device="auto", dtype="auto",
                              model_id=MODEL)
    uvicorn.run(create_app(settings, engine, model_version="bench"), host="127.0.0.1", port=port,
                log_level="warning")


class Gateway:
    """A uvicorn child running the app over one backend, ready once /healthz answers."""

    def __init__(self, backend: str, model_path: Path, env: dict) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.key = env["CHANGJAK_API_KEYS"]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.inference", "--child", f"serve:{backend}",
                                      "--model", str(model_path), "--port", str(self.port)], env=env)

    async def wait(self, timeout: float = 900) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the gateway exited with code {self.proc.returncode}")
                try:
                    if (await http.get(f"{self.url}/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.5)
        raise TimeoutError("the gateway did not come up")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def stream_one(http, text: str, max_tokens: int) -> tuple[float, float, int, int]:
    """One streamed chat completion: (time to first token, total time, completion and prompt tokens)."""
    # min_tokens: every reply runs to max_tokens, as the raw transformers runs do (min_new_tokens), so
    # both sides generate the same tokens; a wave whose replies end early would idle its batch rows
    body = {"model": MODEL, "messages": chat(text), "max_tokens": max_tokens, "min_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start, first, usage = time.perf_counter(), None, {}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("choices") and event["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter()
            usage = event.get("usage") or usage
    end = time.perf_counter()
    return (first or end) - start, end - start, usage.get("completion_tokens", 0), usage.get("prompt_tokens", 0)


async def closed_loop(http, long_text: str, sizes: Sizes, reply_s: float) -> list[float]:
    """Time to first token under a steady load of ``ttft_concurrency`` clients, each sending
    ``CLOSED_LOOP_REQUESTS`` prompts of ``long_text`` (256 tokens) one after another.

    The burst above sends every request at the same instant, so its last first token waits for
    every prompt's prefill. Here the clients start ``reply_s / clients`` apart (``reply_s``: how long
    a burst's reply took) and ask for replies of varied length, so requests arrive while others
    decode, as under a real load of that many users. Each client's first request (the ramp-up,
    when fewer than that many are running) is left out of the samples.
    """
    clients = sizes.ttft_concurrency

    async def client(i: int) -> list[float]:
        await asyncio.sleep(i * reply_s / clients)
        firsts = []
        for k in range(CLOSED_LOOP_REQUESTS):
            tokens = max(1, sizes.max_tokens * (2 + (3 * i + k) % 5) // 4)  # 1/2 .. 3/2 of max_tokens
            firsts.append((await stream_one(http, unique(long_text), tokens))[0])
        return firsts[1:]

    return [t for firsts in await asyncio.gather(*(client(i) for i in range(clients))) for t in firsts]


async def measure_gateway(gateway: Gateway, sizes: Sizes, long_text: str) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {gateway.key}"}
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers, timeout=httpx.Timeout(600)) as http:
        await stream_one(http, ASKS[0], 2)  # warm-up
        decode, ttft_b1, prefill, ttft_c, steady = [], [], [], [], []
        aggregate: dict[int, list[float]] = {c: [] for c in sizes.concurrency}
        for run in range(sizes.runs):
            first, whole, tokens, _ = await stream_one(http, ASKS[run % len(ASKS)], sizes.max_tokens)
            ttft_b1.append(first)
            if tokens > 1:
                decode.append((tokens - 1) / (whole - first))
            first, _, _, prompt_tokens = await stream_one(http, unique(long_text), 1)
            prefill.append(prompt_tokens / first)
            wave = await asyncio.gather(*(stream_one(http, unique(long_text), sizes.max_tokens)
                                          for _ in range(sizes.ttft_concurrency)))
            ttft_c += [w[0] for w in wave]
            steady += await closed_loop(http, long_text, sizes, reply_s=median([w[1] for w in wave]))
            for c in sizes.concurrency:
                start = time.perf_counter()
                wave = await asyncio.gather(*(stream_one(http, ASKS[i % len(ASKS)], sizes.max_tokens)
                                              for i in range(c)))
                aggregate[c].append(sum(w[2] for w in wave) / (time.perf_counter() - start))
    return {"decode_tps_b1": median(decode), "prefill_tps": median(prefill), "ttft_b1_s": median(ttft_b1),
            f"ttft_c{sizes.ttft_concurrency}_p50_s": percentile(ttft_c, 0.5),
            f"ttft_c{sizes.ttft_concurrency}_p95_s": percentile(ttft_c, 0.95),
            f"ttft_c{sizes.ttft_concurrency}_samples": ttft_c,
            f"ttft_c{sizes.ttft_concurrency}_steady_p50_s": percentile(steady, 0.5),
            f"ttft_c{sizes.ttft_concurrency}_steady_p95_s": percentile(steady, 0.95),
            f"ttft_c{sizes.ttft_concurrency}_steady_samples": steady,
            **{f"aggregate_tps_c{c}": median(v) for c, v in aggregate.items()}}


def pool(rounds: list[dict], ttft_concurrency: int) -> dict:
    """One figure per key over the rounds: the median, except TTFT percentiles, taken over every sample."""
    rounds = [r for r in rounds if "error" not in r]
    if not rounds:
        return {"error": "every round failed"}
    keys = {k for r in rounds for k, v in r.items() if isinstance(v, int | float)}
    pooled: dict = {k: median([r[k] for r in rounds if r.get(k) is not None]) for k in sorted(keys)}
    for kind in (f"ttft_c{ttft_concurrency}", f"ttft_c{ttft_concurrency}_steady"):
        samples = [x for r in rounds for x in r.get(f"{kind}_samples", [])]
        if samples:
            pooled[f"{kind}_p50_s"] = percentile(samples, 0.5)
            pooled[f"{kind}_p95_s"] = percentile(samples, 0.95)
            pooled[f"{kind}_samples"] = samples
    return pooled


# --- the run ----------------------------------------------------------------------------------

def child_env(home: Path, models_dir: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(THREADS), "CHANGJAK_HOME": str(home),
            "CHANGJAK_BASE_MODEL__CACHE_DIR": str(models_dir), "CHANGJAK_API_KEYS": "cj-bench-" + secrets.token_hex(12),
            "CHANGJAK_SERVE__LOG_FORMAT": "text", "CHANGJAK_CACHE__ENABLED": "false"}  # the same prompts recur


def run_child(kind: str, model_path: Path, sizes: Sizes, long_text: str, env: dict) -> dict:
    job = json.dumps({"sizes": asdict(sizes), "long_text": long_text})
    out = subprocess.run([sys.executable, "-m", "benchmarks.inference", "--child", kind, "--model", str(model_path),
                          "--job", job], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def targets(results: dict, sizes: Sizes) -> list[dict]:
    """The issue's targets, each with its figure and whether it passes (None: not measured)."""
    def get(backend: str, part: str, key: str) -> float | None:
        return results.get(backend, {}).get(part, {}).get(key)

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def paired(backend: str, gateway_key: str, raw_key: str) -> float | None:
        """The median over rounds of gateway / raw within each round (both ran minutes apart at most),
        falling back to the ratio of the medians."""
        rounds = results.get(backend, {}).get("rounds", {})
        pairs = [ratio(g.get(gateway_key), r.get(raw_key)) for g, r in zip(rounds.get("gateway", []),
                                                                           rounds.get("raw", []), strict=False)]
        pairs = [x for x in pairs if x is not None]
        return median(pairs) if pairs else ratio(get(backend, "gateway", gateway_key), get(backend, "raw", raw_key))

    c, rows = sizes.ttft_concurrency, []
    llama = paired("llamacpp", "decode_tps_b1", "decode_tps_b1")
    rows.append({"target": "llama.cpp gateway decode b1 / raw", "value": llama, "goal": ">= 0.95",
                 "pass": None if llama is None else llama >= 0.95})
    wide = 8 if 8 in sizes.concurrency else max(sizes.concurrency)
    tf = paired("transformers", f"aggregate_tps_c{wide}", "sequential_tps")
    rows.append({"target": f"transformers gateway c{wide} / one-at-a-time generate", "value": tf, "goal": ">= 6",
                 "pass": None if tf is None else tf >= 6})
    for backend in ("llamacpp", "transformers"):
        for kind, load in (("", "all sent at once"), ("_steady", "steady closed loop")):
            p95 = get(backend, "gateway", f"ttft_c{c}{kind}_p95_s")
            rows.append({"target": f"{backend} TTFT p95 at c{c}, {sizes.prompt_tokens}-token prompts, {load} (s)",
                         "value": p95, "goal": "< 2", "pass": None if p95 is None else p95 < 2})
    return rows


def print_table(results: dict, checks: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    keys = sorted({k for r in results.values() for name, part in r.items() if name in ("raw", "gateway")
                   for k, v in part.items() if isinstance(v, int | float | str)})
    table = Table(title=f"inference, {THREADS} threads (tokens/s unless _s)")
    table.add_column("figure", no_wrap=True)
    columns = [(b, part) for b, r in results.items() for part in ("raw", "gateway") if part in r]
    for backend, part in columns:
        table.add_column(f"{backend} {part}", justify="right")
    for key in keys:
        cells = [results[b][p].get(key) for b, p in columns]
        table.add_row(key, *("—" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v) for v in cells))
    console = Console()
    console.print(table)
    for check in checks:
        verdict = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[dim]not measured[/]"}[check["pass"]]
        value = "—" if check["value"] is None else f"{check['value']:.3g}"
        console.print(f"{verdict}  {check['target']}: {value} (goal {check['goal']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="transformers,llamacpp")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run: checks that it works")
    parser.add_argument("--base", default="demo", help="base model source (default: the offline demo model)")
    parser.add_argument("--out", type=Path, help=f"default {RESULTS} ({QUICK_RESULTS.name} with --quick)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, _, backend = args.child.partition(":")
        if kind == "serve":
            return serve(backend, args.model, args.port)
        job = json.loads(args.job)
        raw = raw_transformers if backend == "transformers" else raw_llamacpp
        print(json.dumps(raw(args.model, Sizes(**{**job["sizes"], "concurrency": ()}), job["long_text"])))
        return None

    from changjak import base_model
    from changjak.settings import Settings

    sizes = QUICK if args.quick else Sizes()
    out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    sizes = Sizes(**{**asdict(sizes), "runs": args.runs or sizes.runs})
    settings = Settings.load(base_model={"source": args.base})
    ref = base_model.resolve(settings)
    gguf = settings.models_dir / base_model.DEMO_SOURCE / base_model.DEMO_GGUF_NAME if args.base == "demo" \
        else Path(args.base) if args.base.endswith(".gguf") else None
    from transformers import AutoTokenizer

    long_text = long_prompt(AutoTokenizer.from_pretrained(ref.path), sizes.prompt_tokens)
    env = child_env(settings.home / "bench-inference", settings.models_dir.resolve())
    results: dict = {}
    for backend in args.backends.split(","):
        if importlib.util.find_spec(ENGINES.get(backend, backend)) is None:
            print(f"skipping {backend}: its engine ({ENGINES.get(backend)}) is not installed here")
            continue
        if backend == "vllm":
            print("skipping vllm: it needs a CUDA GPU; run benchmarks/gpu/vllm_bench.py there")
            continue
        model_path = gguf if backend == "llamacpp" else ref.path
        if model_path is None:
            print(f"skipping {backend}: --base is not a GGUF file")
            continue
        # Round by round: the raw engine once, then the gateway once, ``runs`` times. A shared VM's
        # speed drifts by tens of per cent within minutes (memory bandwidth most), so a ratio is taken
        # between figures measured a minute apart, not between a raw block and a gateway block.
        one = Sizes(**{**asdict(sizes), "runs": 1})
        rounds: dict[str, list[dict]] = {"raw": [], "gateway": []}
        gateway, up = Gateway(backend, model_path, env), True
        try:
            try:
                asyncio.run(gateway.wait())
            except Exception as e:  # a gateway that fails must not lose the raw engine's figures
                rounds["gateway"].append({"error": f"{e.__class__.__name__}: {e}"})
                up = False
            for n in range(sizes.runs):
                if backend != "fake":  # fake: the gateway's own cost over an echo, in seconds
                    print(f"{backend}: round {n + 1}/{sizes.runs}, raw engine ...", flush=True)
                    rounds["raw"].append(run_child(f"raw:{backend}", model_path, one, long_text, env))
                if up:
                    print(f"{backend}: round {n + 1}/{sizes.runs}, gateway ...", flush=True)
                    try:
                        rounds["gateway"].append(asyncio.run(measure_gateway(gateway, one, long_text)))
                    except Exception as e:  # noqa: BLE001 - its error is the figure; the raw rounds go on
                        rounds["gateway"].append({"error": f"{e.__class__.__name__}: {e}"})
                        up = False
        finally:
            gateway.close()
        results[backend] = {"gateway": pool(rounds["gateway"], sizes.ttft_concurrency), "rounds": rounds}
        if rounds["raw"]:
            results[backend]["raw"] = pool(rounds["raw"], sizes.ttft_concurrency)
    checks = targets(results, sizes)
    print_table(results, checks)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": describe(threads=THREADS),
                                    "model": {"source": args.base, "path": str(ref.path), "gguf": str(gguf)},
                                    "sizes": asdict(sizes), "quick": args.quick, "results": results,
                                    "targets": checks}, ensure_ascii=False, indent=2) + "\n")
    print(f"wrote {out}")
    return None


if __name__ == "__main__":
    main()
