"""Gateway overhead and throughput: changjak vs the LiteLLM proxy, in front of the same stand-in.

    python -m benchmarks.gateway                         # table on stdout, JSON in benchmarks/results/
    python -m benchmarks.gateway --requests 20 --concurrency 1,10 --smoke   # a quick look only

A fast stand-in OpenAI-compatible server (``tests/backends/inference/standin.py``, Starlette, a
fixed short reply) is the model. The same non-streamed chat request is sent, by ``C`` concurrent
clients (asyncio + httpx, one process), to: the stand-in directly; ``changjak serve --backend
openai`` in front of it; and ``litellm --config`` in front of it (from the separate
``.venv-litellm``: ``python3.11 -m venv .venv-litellm && .venv-litellm/bin/pip install
'litellm[proxy]'``, so its pins never touch ours). Both gateways run ``--workers`` processes.
Added latency is a gateway's p50/p95 minus the direct call's at the same concurrency; requests/s
is completed requests over wall time. The ``--runs`` at one concurrency go round by round (every
target once, then again), so a shared VM that speeds up or slows down for minutes at a time moves
every target's median alike, not just the one that ran then; the run kept is the median by req/s.
The last target of each round sends a deterministic request (``temperature: 0``) that changjak
answers from its response cache.

Features on, compared like with like: changjak with a managed key (per-key rpm/tpm/concurrency
limits), the audit trail, metrics, the safety policy and, last run, the cache (whatever of these
the settings of this checkout offer: see ``_our_settings``). LiteLLM offline: master-key auth only;
its virtual keys, per-key limits and budgets need its database, whose Prisma engines it downloads
at start, which fails offline. It starts with ``LITELLM_LOCAL_MODEL_COST_MAP=True`` and telemetry
off so it never tries the network.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from rich.console import Console
from rich.table import Table

from benchmarks.machine import describe

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gateway.json"
LITELLM = ROOT / ".venv-litellm" / "bin" / "litellm"
MODEL = "changjak-writer"
BOOTSTRAP_KEY = "cj-bench-bootstrap-key-0123456789"
LITELLM_KEY = "sk-bench-master-key"
ASK = [{"role": "user", "content": "비 내리는 골목에서 편지를 발견했다."}]
REPLY = "주인공은 편지를 펼쳤다."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, headers: dict | None = None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the server exited with {proc.returncode}")
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url}: not ready within {timeout:.0f} s")


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _our_settings(home: Path, upstream: str, workers: int) -> dict[str, str]:
    """Environment for changjak: every gateway feature this checkout's settings offer, switched on."""
    from changjak.settings import Settings

    env = {"CHANGJAK_HOME": str(home), "CHANGJAK_API_KEYS": BOOTSTRAP_KEY, "CHANGJAK_SERVE__UPSTREAM_URL": upstream,
           "CHANGJAK_SERVE__WORKERS": str(workers), "CHANGJAK_SERVE__LOG_FORMAT": "json",
           "CHANGJAK_SERVE__READY_PROBE_TTL_S": "5"}
    fields = Settings.model_fields
    if "audit" in fields:
        env["CHANGJAK_AUDIT__ENABLED"] = "true"
    if "cache" in fields:
        env["CHANGJAK_CACHE__ENABLED"] = "true"
    return env


def managed_key(env: dict[str, str]) -> tuple[str, str]:
    """A key made with ``changjak keys create`` (per-key limits), else the bootstrap key."""
    cmd = [sys.executable, "-m", "changjak", "keys", "create", "--name", "bench", "--role", "developer",
           "--tenant", "bench", "--rpm", "10000000", "--tpm", "1000000000", "--concurrency", "10000", "--json"]
    made = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    if made.returncode != 0:
        return BOOTSTRAP_KEY, "bootstrap key (no `changjak keys` here)"
    return json.loads(made.stdout)["key"], "managed key with rpm/tpm/concurrency limits"


async def load(url: str, headers: dict, body: dict, requests: int, concurrency: int) -> dict:
    """``requests`` POSTs by ``concurrency`` keep-alive clients; latency percentiles (ms) and requests/s.

    The clients speak HTTP/1.1 over raw asyncio streams with the request bytes built once: a full
    HTTP client (httpx) costs ~1 ms of CPU a request, which on 2 shared cores would cap every
    target near the same rate and hide the gateways' own cost.
    """
    parts = urlsplit(url)
    payload = json.dumps(body, ensure_ascii=False).encode()
    head = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json",
            f"Content-Length: {len(payload)}", *(f"{k}: {v}" for k, v in headers.items())]
    raw = ("\r\n".join(head) + "\r\n\r\n").encode() + payload
    latencies: list[float] = []
    errors = 0
    remaining = requests

    async def client(warm: int) -> None:
        nonlocal remaining, errors
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            for _ in range(warm):  # connections and caches warm before the clock starts
                await _exchange(reader, writer, raw)
            await started.wait()
            while remaining > 0:
                remaining -= 1
                t = time.perf_counter()
                try:
                    status = await _exchange(reader, writer, raw)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
                    continue
                latencies.append((time.perf_counter() - t) * 1000)
                errors += status != 200
        finally:
            writer.close()

    started = asyncio.Event()
    tasks = [asyncio.create_task(client(2 if i < 5 else 0)) for i in range(concurrency)]
    await asyncio.sleep(0.5)  # every client connected and warmed
    began = time.perf_counter()
    started.set()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - began
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"requests": len(latencies), "errors": errors, "p50_ms": round(q[49], 2), "p95_ms": round(q[94], 2),
            "rps": round(len(latencies) / wall, 1)}


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> int:
    """Send one request, read its whole response (Content-Length or chunked); its status."""
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        at = lower.find(b"content-length:")
        length = int(lower[at + 15:lower.index(b"\r\n", at)]) if at >= 0 else 0
        await reader.readexactly(length)
    return status


def litellm_config(upstream: str, workdir: Path) -> Path:
    path = workdir / "litellm.yaml"
    path.write_text(json.dumps({  # JSON is YAML
        "model_list": [{"model_name": MODEL, "litellm_params": {"model": f"openai/{MODEL}", "api_base": upstream,
                                                                "api_key": "sk-upstream"}}],
        "general_settings": {"master_key": LITELLM_KEY},
        "litellm_settings": {"telemetry": False, "drop_params": True, "set_verbose": False}}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per run")
    parser.add_argument("--concurrency", default="1,10,100", help="comma-separated client counts")
    parser.add_argument("--workers", type=int, default=1, help="processes of each gateway (the same for both)")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM proxy")
    parser.add_argument("--smoke", action="store_true", help="tiny run: do not write benchmarks/results/")
    parser.add_argument("--runs", type=int, default=3, help="runs per target and level; the median run is kept")
    parser.add_argument("--redis", metavar="URL", help="changjak's limits and cache in this Redis (shared by its "
                        "workers, as --workers N needs for one limit per key)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"default {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    console = Console(width=140)
    body = {"model": MODEL, "messages": ASK, "max_tokens": 32}
    results: dict = {"machine": describe(),
                     "requests_per_run": args.requests, "workers": args.workers, "runs_per_point": args.runs,
                     "redis": bool(args.redis), "runs": []}
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="changjak-bench-") as tmp:
        work = Path(tmp)
        try:
            port = free_port()
            upstream = f"http://127.0.0.1:{port}/v1"
            standin = start([sys.executable, "-m", "tests.backends.inference.standin", "--port", str(port),
                             "--reply", REPLY, "--model", MODEL], {})
            procs.append(standin)
            wait_for(f"{upstream}/models", standin)

            env = _our_settings(work / ".changjak", upstream, args.workers)
            if args.redis:
                env |= {"CHANGJAK_REDIS_URL": args.redis, "CHANGJAK_REDIS_PREFIX": f"bench{os.getpid()}"}
            key, key_kind = managed_key(env)
            if args.redis:
                key_kind += " (counted in Redis), cache in Redis"
            ours_port = free_port()
            ours = start([sys.executable, "-m", "changjak", "serve", "--backend", "openai", "--port", str(ours_port)],
                         env)
            procs.append(ours)
            wait_for(f"http://127.0.0.1:{ours_port}/readyz", ours)
            targets = [("direct (stand-in)", f"{upstream}/chat/completions", {}, body),
                       ("changjak", f"http://127.0.0.1:{ours_port}/v1/chat/completions",
                        {"Authorization": f"Bearer {key}"}, body)]
            features = {"direct (stand-in)": "none",
                        "changjak": f"{key_kind}, audit, metrics, safety policy, cache miss (temperature 1)",
                        "changjak cache hit": f"{key_kind}, audit, metrics, safety policy, cache hit (temperature 0)",
                        "litellm": "master key only (offline: no virtual keys, limits, budgets)"}
            if not args.no_litellm and LITELLM.exists():
                lite_port = free_port()
                lite = start([str(LITELLM), "--config", str(litellm_config(upstream, work)), "--host", "127.0.0.1",
                              "--port", str(lite_port), "--num_workers", str(args.workers)],
                             {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"})
                procs.append(lite)
                wait_for(f"http://127.0.0.1:{lite_port}/health/liveliness", lite)
                targets.append(("litellm", f"http://127.0.0.1:{lite_port}/v1/chat/completions",
                                {"Authorization": f"Bearer {LITELLM_KEY}"}, body))
            elif not args.no_litellm:
                console.print(f"[yellow]no {LITELLM}: LiteLLM skipped (see this module's docstring)[/]")
            targets.append(("changjak cache hit", targets[1][1], targets[1][2], {**body, "temperature": 0}))

            for concurrency in levels:
                tries: dict[str, list[dict]] = {name: [] for name, *_ in targets}
                for _ in range(args.runs):  # round by round: a VM whose speed drifts for minutes slows all alike
                    for name, url, headers, payload in targets:
                        tries[name].append(asyncio.run(load(url, headers, payload, args.requests, concurrency)))
                for name, got in tries.items():
                    run = sorted(got, key=lambda r: r["rps"])[len(got) // 2]  # the median run by req/s
                    run["rps_runs"] = [r["rps"] for r in got]
                    results["runs"].append({"target": name, "concurrency": concurrency, **run})
                    console.print(f"{name:>20} c={concurrency:<4} {run}")
            results["changjak_metrics"] = scrape(f"http://127.0.0.1:{ours_port}/metrics")
        finally:
            for proc in reversed(procs):
                stop(proc)
    results["features"] = features
    results["summary"] = summarise(results["runs"])
    results["targets"] = check(results["summary"])
    show(console, results)
    if not args.smoke:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {args.out}")


def scrape(url: str) -> dict[str, float]:
    """changjak's own count of cache hits/misses and rate-limited requests: proof the runs did what they say."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"changjak_cache_lookups_total", "changjak_rate_limited_requests_total"}
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for sample in family.samples:
            if sample.name in wanted:
                name = f"{sample.name}{{{','.join(f'{k}={v}' for k, v in sorted(sample.labels.items()))}}}"
                found[name] = found.get(name, 0) + sample.value
    return found


def summarise(runs: list[dict]) -> list[dict]:
    """Per concurrency: each gateway's added p50/p95 over direct, and its rps ratio to LiteLLM's."""
    out = []
    for c in sorted({r["concurrency"] for r in runs}):
        at = {r["target"]: r for r in runs if r["concurrency"] == c}
        direct, lite = at.get("direct (stand-in)"), at.get("litellm")
        for name, run in at.items():
            if name == "direct (stand-in)":
                continue
            row = {"target": name, "concurrency": c, "rps": run["rps"],
                   "added_p50_ms": round(run["p50_ms"] - direct["p50_ms"], 2) if direct else None,
                   "added_p95_ms": round(run["p95_ms"] - direct["p95_ms"], 2) if direct else None,
                   "rps_vs_litellm": round(run["rps"] / lite["rps"], 2) if lite and lite["rps"] else None}
            out.append(row)
    return out


def check(summary: list[dict]) -> list[dict]:
    """The issue's targets, at the levels this run measured (a target whose level did not run is left out)."""
    rows = {(s["target"], s["concurrency"]): s for s in summary}
    checks = []
    if (miss := rows.get(("changjak", 10))) and miss["added_p95_ms"] is not None:
        checks.append({"target": "added p95 ms at 10 clients (cache miss)", "value": miss["added_p95_ms"],
                       "goal": "<= 5", "pass": miss["added_p95_ms"] <= 5})
    for (name, c), row in sorted(rows.items(), key=lambda kv: kv[0][1]):
        if name == "changjak cache hit":
            checks.append({"target": f"cache hits req/s at {c} clients", "value": row["rps"], "goal": ">= 1000",
                           "pass": row["rps"] >= 1000})
    for (name, c), row in sorted(rows.items(), key=lambda kv: kv[0][1]):
        if name == "changjak" and row["rps_vs_litellm"] is not None:
            checks.append({"target": f"req/s x LiteLLM at {c} clients (cache miss)", "value": row["rps_vs_litellm"],
                           "goal": ">= 5", "pass": row["rps_vs_litellm"] >= 5})
    return checks


def show(console: Console, results: dict) -> None:
    table = Table(title=f"gateway overhead, {results['workers']} worker(s) each, {results['machine']['cpus']} CPUs")
    for column in ("target", "clients", "p50 ms", "p95 ms", "added p50", "added p95", "req/s", "x LiteLLM", "errors"):
        table.add_column(column, justify="left" if column == "target" else "right")
    summary = {(s["target"], s["concurrency"]): s for s in results["summary"]}
    for run in results["runs"]:
        s = summary.get((run["target"], run["concurrency"]), {})
        table.add_row(run["target"], str(run["concurrency"]), f"{run['p50_ms']:.1f}", f"{run['p95_ms']:.1f}",
                      _num(s.get("added_p50_ms")), _num(s.get("added_p95_ms")), f"{run['rps']:.0f}",
                      _num(s.get("rps_vs_litellm")), str(run["errors"]))
    console.print(table)
    for name, what in results["features"].items():
        console.print(f"  {name}: {what}")
    console.print(f"  changjak's own metrics: {results.get('changjak_metrics')}")
    machine = results["machine"]
    console.print(f"  machine: {machine.get('cpu_model')}, {machine.get('cpus')} CPUs, SIMD {machine.get('simd')}, "
                  f"calibration loop {machine.get('calibration_ms')} ms")
    for row in results.get("targets", []):
        mark = "[green]pass[/]" if row["pass"] else "[red]FAIL[/]"
        console.print(f"  {mark} {row['target']}: {row['value']} (goal {row['goal']})")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    main()
