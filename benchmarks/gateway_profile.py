"""Where the gateway's CPU goes, per request: CPU ms of the server process and its top functions.

    python -m benchmarks.gateway_profile                          # fresh and cache-hit paths, c=1 and c=10
    python -m benchmarks.gateway_profile --paths hit --concurrency 10 --profile --top 40
    python -m benchmarks.gateway_profile --via asgi               # the app alone, no HTTP server

Not a timing benchmark (``benchmarks/gateway.py`` is; it needs a quiet machine): this counts the
CPU time (``time.process_time``, every thread of this process) the gateway spends per request,
which a busy shared machine changes little. The app is built as ``benchmarks/gateway.py`` runs
it (``_our_settings``: a managed key with rpm/tpm/concurrency limits, audit, cache, metrics, the
safety policy, JSON logs), with the ``openai`` backend in front of the stand-in
(``tests/backends/inference/standin.py``) in a subprocess, so the stand-in's CPU is not counted.

``--via uvicorn`` (default) serves it with uvicorn in this process, configured as ``changjak
serve`` configures it, and sends the requests from a subprocess with ``benchmarks.gateway.load``
(raw keep-alive HTTP/1.1), so the figure is the whole server: HTTP parsing, the app, the upstream
client, the audit writer's thread. ``--via asgi`` calls the ASGI app directly (no HTTP server;
the driver's own cost, a few µs, is counted). Each path is warmed up first; ``--profile`` adds a
second, cProfile'd run (the event loop's thread only; it inflates the time, so its CPU figure is
not the one to quote) and prints the top functions by cumulative time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.gateway import ASK, MODEL, REPLY, _our_settings, free_port, stop, wait_for
from benchmarks.machine import calibrate

ROOT = Path(__file__).resolve().parents[1]
PATHS = {"fresh": {}, "hit": {"temperature": 0}}  # over the body: temperature 1 is never cached
LOOP = ["?"]  # the running loop's class, for the report


def build_app(home: Path, upstream: str):
    """The app and a managed key, from the environment ``benchmarks/gateway.py`` gives changjak."""
    from changjak.serve import logging as serve_logging
    from changjak.serve.app import create_app
    from changjak.serve.keys import KeyStore
    from changjak.settings import Settings

    os.environ.update(_our_settings(home, upstream, workers=1))
    settings = Settings.load(None, serve={"backend": "openai"})
    store = KeyStore.from_settings(settings)  # what `changjak keys create ... --rpm --tpm --concurrency` does
    key, _ = store.create("bench", "developer", "bench", rpm=10_000_000, tpm=1_000_000_000, concurrency=10_000)
    store.close()
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - log lines are formatted and written, to nowhere
    serve_logging.configure(settings.serve.log_format)
    return settings, create_app(settings), key


def body_of(path: str) -> dict:
    return {"model": MODEL, "messages": ASK, "max_tokens": 32, **PATHS[path]}


async def drive_uvicorn(settings, app, key: str, runs: list[tuple[str, int, int, bool]]) -> list[dict]:
    """Serve ``app`` with uvicorn here; each run's requests come from a subprocess."""
    import uvicorn

    from changjak.safety import logs
    from changjak.serve import _config

    settings.serve.port = free_port()
    server = uvicorn.Server(_config(app, settings))
    logs.install()
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    url = f"http://127.0.0.1:{settings.serve.port}/v1/chat/completions"
    LOOP[0] = type(asyncio.get_running_loop()).__module__
    out = []
    try:
        for path, requests, concurrency, profile in runs:
            script = ("import asyncio, json, sys; from benchmarks.gateway import load; "
                      "a = json.loads(sys.argv[1]); print(json.dumps(asyncio.run(load(*a))))")
            args = json.dumps([url, {"Authorization": f"Bearer {key}"}, body_of(path), requests, concurrency])
            profiler = cProfile.Profile(time.thread_time) if profile else None
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, args, cwd=ROOT,
                                                        stdout=subprocess.PIPE)
            await asyncio.sleep(0.3)  # the client's interpreter starts and connects (its warm-up is not counted)
            cpu, loop_cpu, sys_cpu = time.process_time(), time.thread_time(), os.times().system
            if profiler:
                profiler.enable()
            stdout, _ = await proc.communicate()
            if profiler:
                profiler.disable()
            cpu, loop_cpu = time.process_time() - cpu, time.thread_time() - loop_cpu
            result = json.loads(stdout)
            out.append(_row(path, concurrency, result["requests"], result["errors"], cpu, loop_cpu,
                            os.times().system - sys_cpu, profiler, rps=result["rps"]))
    finally:
        server.should_exit = True
        await task
    return out


async def drive_asgi(app, key: str, runs: list[tuple[str, int, int, bool]]) -> list[dict]:
    """Call the ASGI app directly, ``concurrency`` requests at a time."""
    LOOP[0] = type(asyncio.get_running_loop()).__module__
    lifespan = _Lifespan(app)
    await lifespan.start()
    out = []
    try:
        for path, requests, concurrency, profile in runs:
            payload = json.dumps(body_of(path), ensure_ascii=False).encode()
            headers = [(b"host", b"bench"), (b"content-type", b"application/json"),
                       (b"content-length", str(len(payload)).encode()), (b"authorization", f"Bearer {key}".encode())]
            errors = 0
            left = requests

            async def client(headers: list = headers, payload: bytes = payload) -> None:
                nonlocal left, errors
                while left > 0:
                    left -= 1
                    errors += await _asgi_call(app, headers, payload) != 200

            profiler = cProfile.Profile(time.thread_time) if profile else None
            cpu, loop_cpu, sys_cpu = time.process_time(), time.thread_time(), os.times().system
            if profiler:
                profiler.enable()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            if profiler:
                profiler.disable()
            cpu, loop_cpu = time.process_time() - cpu, time.thread_time() - loop_cpu
            out.append(_row(path, concurrency, requests, errors, cpu, loop_cpu, os.times().system - sys_cpu, profiler))
    finally:
        await lifespan.stop()
    return out


async def _asgi_call(app, headers: list[tuple[bytes, bytes]], payload: bytes) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "root_path": "", "query_string": b"",
             "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}}
    sent = False
    status = 0

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await asyncio.Event().wait()  # nothing more: a client that stays

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


class _Lifespan:
    """The ASGI lifespan protocol, by hand (startup before the runs, shutdown after)."""

    def __init__(self, app) -> None:
        self.app, self.inbox, self.outbox = app, asyncio.Queue(), asyncio.Queue()

    async def start(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self.task = asyncio.create_task(self.app(scope, self.inbox.get, self.outbox.put))
        await self.inbox.put({"type": "lifespan.startup"})
        if (message := await self.outbox.get())["type"] != "lifespan.startup.complete":
            raise SystemExit(f"the app did not start: {message}")

    async def stop(self) -> None:
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.outbox.get()
        await self.task


def _row(path: str, concurrency: int, requests: int, errors: int, cpu: float, loop_cpu: float, sys_cpu: float,
         profiler, rps: float | None = None) -> dict:
    """``cpu_ms_per_request``: every thread; ``loop_ms_per_request``: the event loop's thread alone;
    ``sys_ms_per_request``: the kernel's part of the first (system calls: sockets, epoll, file writes);
    ``rps``: what the client measured (served by uvicorn only)."""
    per = 1000 / max(requests, 1)
    row = {"path": path, "concurrency": concurrency, "requests": requests, "errors": errors,
           "cpu_ms_per_request": round(cpu * per, 3), "loop_ms_per_request": round(loop_cpu * per, 3),
           "sys_ms_per_request": round(sys_cpu * per, 3), "rps": rps,
           "profiled": profiler is not None}
    if profiler is not None:
        row["profiler"] = profiler
    return row


def _loop_runner():
    """An asyncio.Runner on the event loop uvicorn would pick (uvloop when installed)."""
    from uvicorn.config import Config

    config = Config(app=None)
    factory = getattr(config, "get_loop_factory", None)
    if factory is not None:  # uvicorn >= 0.36
        return asyncio.Runner(loop_factory=factory())
    config.setup_event_loop()  # older: sets the uvloop policy when it is there
    return asyncio.Runner()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--via", choices=("uvicorn", "asgi"), default="uvicorn")
    parser.add_argument("--paths", default="fresh,hit", help="comma-separated: fresh (temperature 1), hit")
    parser.add_argument("--concurrency", default="1,10", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=1000, help="measured requests per run")
    parser.add_argument("--warmup", type=int, default=300, help="unmeasured requests before each path")
    parser.add_argument("--repeat", type=int, default=3, help="measured runs per point; min and median shown")
    parser.add_argument("--profile", action="store_true", help="also a cProfile'd run per point; print its top")
    parser.add_argument("--top", type=int, default=30, help="functions shown per profile")
    parser.add_argument("--sort", default="cumulative", help="pstats sort key (cumulative, tottime ...)")
    parser.add_argument("--callers", metavar="NAME", help="also who calls the functions matching NAME (a regex)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    runs: list[tuple[str, int, int, bool]] = []
    warm: list[bool] = []  # the first run of each path warms it up: not reported
    for path in args.paths.split(","):
        runs.append((path, args.warmup, 10, False))
        warm.append(True)
        for c in levels:
            runs += [(path, args.requests, c, False)] * args.repeat + ([(path, args.requests, c, True)]
                                                                      if args.profile else [])
            warm += [False] * (args.repeat + args.profile)
    calibration = calibrate()
    with tempfile.TemporaryDirectory(prefix="changjak-profile-") as tmp:
        port = free_port()
        upstream = f"http://127.0.0.1:{port}/v1"
        standin = subprocess.Popen([sys.executable, "-m", "tests.backends.inference.standin", "--port", str(port),
                                    "--reply", REPLY, "--model", MODEL], cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            wait_for(f"{upstream}/models", standin)
            settings, app, key = build_app(Path(tmp) / ".changjak", upstream)
            with _loop_runner() as runner:
                drive = drive_uvicorn(settings, app, key, runs) if args.via == "uvicorn" else drive_asgi(app, key, runs)
                rows = runner.run(drive)
        finally:
            stop(standin)
    print(f"server CPU ms per request, via {args.via} (event loop: {LOOP[0]}), min / median of {args.repeat} runs; "
          f"calibration loop {calibration:.1f} ms before, {calibrate():.1f} ms after (higher: a slower machine now)",
          file=sys.__stdout__)
    points: dict[tuple, list[dict]] = {}
    for warming, row in zip(warm, rows, strict=True):
        if warming:
            continue
        points.setdefault((row["path"], row["concurrency"], row["profiled"]), []).append(row)
    for (path, concurrency, profiled), got in points.items():
        summary = {"path": path, "concurrency": concurrency, "requests": got[0]["requests"],
                   "errors": sum(r["errors"] for r in got)}
        for name in ("cpu_ms_per_request", "loop_ms_per_request", "sys_ms_per_request", "rps"):
            if got[0].get(name) is None:
                continue
            values = sorted(r[name] for r in got)
            summary[name] = [values[0], values[len(values) // 2]]
        if profiled:
            summary["profiled"] = True
        print(json.dumps(summary), file=sys.__stdout__)
        if (profiler := got[0].get("profiler")) is not None:
            text = io.StringIO()
            stats = pstats.Stats(profiler, stream=text).strip_dirs().sort_stats(args.sort)
            stats.print_stats(args.top)
            if args.callers:
                stats.print_callers(args.callers)
            print(text.getvalue(), file=sys.__stdout__)


if __name__ == "__main__":
    main()
