"""Graceful shutdown and workers, with real processes: a stand-in upstream model server and
``changjak serve --backend openai`` in front of it, each on a free port.

SIGTERM during a slow stream: the stream still ends with ``[DONE]``, a new request is refused
(503 or connection refused), and the process exits 0 within the drain timeout. ``--workers 2``
answers from two processes and ``/metrics`` counts every worker's requests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from changjak.serve.lifecycle import DrainMiddleware, Lifecycle, hook_signals

KEY = "cj-lifecycle-key-0123456789"
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url}: the process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready within {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def upstream() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.backends.inference.standin", "--port", str(port),
                             "--delay", "0.05", "--model", "changjak-writer"], cwd=ROOT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_ready(f"{url}/models", proc)
        yield url
    finally:
        stop(proc)


def gateway(upstream: str, tmp_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "CHANGJAK_API_KEYS": KEY, "CHANGJAK_HOME": str(tmp_path / ".changjak"),
           "CHANGJAK_SERVE__UPSTREAM_URL": upstream, "CHANGJAK_SERVE__DRAIN_TIMEOUT_S": "10",
           "CHANGJAK_SERVE__READY_PROBE_TTL_S": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "changjak", "serve", "--backend", "openai", "--port", str(port),
                             *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/readyz", proc, timeout=120)
    except AssertionError:
        stop(proc)
        raise AssertionError(proc.stdout.read().decode(errors="replace")[-3000:]) from None
    return proc, url


def chat(text: str, **extra) -> dict:
    return {"model": "changjak-writer", "messages": [{"role": "user", "content": text}], **extra}


def test_sigterm_lets_the_stream_finish_refuses_new_requests_and_exits_0(upstream: str, tmp_path: Path) -> None:
    proc, url = gateway(upstream, tmp_path)
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http, \
                http.stream("POST", "/v1/chat/completions", json=chat("가" * 40, stream=True)) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))  # the stream has begun
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            try:
                refused = httpx.post(f"{url}/v1/chat/completions", headers=headers, json=chat("새 요청"), timeout=5)
                assert refused.status_code == 503 and refused.json()["error"]["type"] == "service_unavailable"
            except httpx.ConnectError:
                pass  # the listening socket is already closed: as good
            rest = [line for line in lines if line.startswith("data:")]
        assert rest[-1] == "data: [DONE]"
        assert not any('"error"' in line for line in rest)
        assert proc.wait(15) == 0
        assert time.monotonic() - sent < 12
    finally:
        stop(proc)


def test_two_workers_answer_and_metrics_count_both(upstream: str, tmp_path: Path) -> None:
    proc, url = gateway(upstream, tmp_path, "--workers", "2")
    try:
        # /readyz answers once one worker is up; the supervisor may still be starting the other
        deadline = time.monotonic() + 60
        while len(workers := _spawned_children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(workers) == 2
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as http:
            for i in range(12):
                with httpx.Client(base_url=url, headers=http.headers, timeout=30) as fresh:  # new connections
                    assert fresh.post("/v1/chat/completions", json=chat(f"안녕 {i}")).status_code == 200
            text = http.get("/metrics").text
        answered = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("changjak_requests_total{") and 'route="/v1/chat/completions"' in line)
        assert answered == 12
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        stop(proc)


def _spawned_children(pid: int) -> list[Path]:
    """The /proc entries of ``pid``'s children started by multiprocessing's spawn (uvicorn's workers)."""
    found = []
    for child in (p for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == pid):
        try:
            if b"spawn_main" in (child / "cmdline").read_bytes():
                found.append(child)
        except OSError:  # it has exited meanwhile
            pass
    return found


def _ppid(proc_dir: Path) -> int | None:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


# In-process parts of the same story.

@pytest.mark.anyio
async def test_drain_middleware_refuses_new_requests_but_keeps_liveness_and_metrics() -> None:
    seen: list[str] = []

    async def app(scope, receive, send):
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    lifecycle = Lifecycle()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(DrainMiddleware(app, lifecycle)), base_url="http://t")
    async with client:
        assert (await client.get("/v1/models")).status_code == 200
        lifecycle.drain()
        refused = await client.get("/v1/models")
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
    assert refused.status_code == 503 and refused.headers["connection"] == "close"
    assert refused.json()["error"] == {"message": "The server is shutting down; retry on another replica.",
                                       "type": "service_unavailable", "param": None, "code": "draining"}
    assert seen == ["/v1/models", "/healthz", "/metrics"]


def test_signals_are_chained_only_onto_uvicorn() -> None:
    before = signal.getsignal(signal.SIGTERM)
    hook_signals(Lifecycle())()  # pytest's handler is not uvicorn's: left alone
    assert signal.getsignal(signal.SIGTERM) is before

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(lambda *a: None))
    lifecycle = Lifecycle()
    previous = signal.signal(signal.SIGTERM, server.handle_exit)
    try:
        undo = hook_signals(lifecycle)
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        assert lifecycle.draining and server.should_exit
        undo()
        assert signal.getsignal(signal.SIGTERM) == server.handle_exit
    finally:
        signal.signal(signal.SIGTERM, previous)
