"""One audit record per request (changjak.audit.middleware), committed before the answer's last byte."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from changjak import db
from changjak.audit import store
from changjak.backends.inference.fake import FakeBackend
from changjak.serve.app import create_app
from tests.serve.conftest import KEY, MODEL, StreamingASGITransport
from tests.test_audit import pg_schema

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "안녕하세요"}]}


def records(app: FastAPI, **filters) -> list[dict]:
    return store.query(app.state.db, limit=500, **filters)


def one(app: FastAPI, request_id: str) -> dict:
    found = records(app, request_id=request_id)
    assert len(found) == 1, found
    return found[0]


async def test_every_kind_of_request_leaves_one_record(app: FastAPI, http: httpx.AsyncClient) -> None:
    ok = await http.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "r-plain"})
    stream = await http.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers={"X-Request-Id": "r-sse"})
    anon = await http.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "r-anon", "Authorization": ""})
    bad = await http.post("/v1/chat/completions", json={"model": MODEL}, headers={"X-Request-Id": "r-bad"})
    lost = await http.get("/v1/nowhere", headers={"X-Request-Id": "r-404"})
    for probe in ("/healthz", "/readyz", "/metrics"):
        await http.get(probe, headers={"X-Request-Id": "r-probe"})
    assert [r.status_code for r in (ok, stream, anon, bad, lost)] == [200, 200, 401, 400, 404]
    assert stream.text.rstrip().endswith("data: [DONE]")

    plain = one(app, "r-plain")
    assert (plain["method"], plain["route"], plain["status"], plain["outcome"]) == (
        "POST", "/v1/chat/completions", 200, "complete")
    assert plain["key_prefix"].startswith("bootstrap_") and plain["tenant"] == "*"
    assert plain["latency_ms"] > 0 and plain["completion_tokens"] > 0
    assert one(app, "r-sse")["status"] == 200
    unauthenticated = one(app, "r-anon")
    assert (unauthenticated["status"], unauthenticated["principal"], unauthenticated["key_prefix"]) == (401, None, None)
    assert one(app, "r-bad")["status"] == 400
    assert (one(app, "r-404")["status"], one(app, "r-404")["route"]) == (404, None)
    assert records(app, request_id="r-probe") == []
    assert store.verify(app.state.db).ok


async def test_a_request_whose_app_fails_is_recorded_as_a_500(make_settings) -> None:
    app = create_app(make_settings(api_keys=KEY), FakeBackend(MODEL, fail_after=0))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        failed = await http.post("/v1/chat/completions", json=CHAT,
                                 headers={"Authorization": f"Bearer {KEY}", "X-Request-Id": "r-boom"})
        assert failed.status_code == 500
        record = one(app, "r-boom")
    assert (record["status"], record["outcome"]) == (500, "error")


async def test_a_client_that_hangs_up_mid_stream_is_recorded(make_settings) -> None:
    app = create_app(make_settings(api_keys=KEY), FakeBackend(MODEL, reply="가" * 200, delay=0.01))
    transport = StreamingASGITransport(app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        request = http.build_request("POST", "/v1/chat/completions", json={**CHAT, "stream": True},
                                     headers={"Authorization": f"Bearer {KEY}", "X-Request-Id": "r-gone"})
        response = await http.send(request, stream=True)
        async for _ in response.aiter_bytes():
            break
        await response.aclose()
        for _ in range(50):
            if records(app, request_id="r-gone"):
                break
            await asyncio.sleep(0.05)
        record = one(app, "r-gone")
    assert (record["status"], record["outcome"]) == (200, "disconnected")


@pytest.mark.parametrize("stream", [False, True])
async def test_the_record_is_committed_before_the_final_body_message(app: FastAPI, http: httpx.AsyncClient,
                                                                     stream: bool) -> None:
    request_id = f"r-final-{stream}"
    body = json.dumps({**CHAT, "stream": stream}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
             "root_path": "", "server": ("t", 80), "client": ("127.0.0.1", 1),
             "headers": [(b"authorization", f"Bearer {KEY}".encode()), (b"content-type", b"application/json"),
                         (b"x-request-id", request_id.encode())]}
    forever, sent = asyncio.Event(), [False]
    seen: list[tuple[bool, int]] = []

    async def receive() -> dict:
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        await forever.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body":
            last = not message.get("more_body", False) or message["body"].endswith(b"data: [DONE]\n\n")
            seen.append((last, len(await asyncio.to_thread(records, app, request_id=request_id))))

    await app(scope, receive, send)
    done = next(i for i, (last, _) in enumerate(seen) if last)
    assert seen[done] == (True, 1)  # committed when the last byte (a stream's [DONE]) went out
    assert all(count == 0 for _, count in seen[:done])  # and not a moment earlier: streams are not held
    assert len(seen) > 2 if stream else len(seen) == 1


async def test_an_answer_whose_record_cannot_be_written_never_ends(app: FastAPI, http: httpx.AsyncClient,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    with app.state.db.begin() as conn:
        conn.execute(sa.text("DROP TABLE audit_records"))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/v1/models", "raw_path": b"/v1/models", "query_string": b"", "root_path": "",
             "server": ("t", 80), "client": ("127.0.0.1", 1), "headers": [(b"authorization", f"Bearer {KEY}".encode())]}
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    with pytest.raises(Exception, match="audit record"):
        await app(scope, receive, send)
    assert not [m for m in sent if m["type"] == "http.response.body" and not m.get("more_body", False)]
    assert "could not write 1 audit records" in caplog.text


async def test_concurrent_requests_share_transactions(app: FastAPI, http: httpx.AsyncClient) -> None:
    before = app.state.audit.batches
    answers = await asyncio.gather(*(http.post("/v1/chat/completions", json=CHAT) for _ in range(40)))
    assert {a.status_code for a in answers} == {200}
    assert app.state.audit.batches - before < 40
    assert store.verify(app.state.db).count == 40


async def test_no_key_and_no_pii_reach_the_table(app: FastAPI, http: httpx.AsyncClient) -> None:
    fake_key = "sk-live-ZXCVBNM0987654321"
    phone = "010-2345-6789"
    await http.post("/v1/chat/completions", json={"model": MODEL, "messages": [
        {"role": "user", "content": f"제 번호는 {phone}, 키는 {fake_key}"}]}, headers={"X-Request-Id": "r-pii"})
    await http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {fake_key}"})
    await http.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": f"req-{phone}"})
    with app.state.db.connect() as conn:
        dump = json.dumps([list(r) for r in conn.execute(sa.text("SELECT * FROM audit_records"))], ensure_ascii=False)
    assert dump.count('"POST"') == 3
    for secret in (fake_key, KEY, "2345-6789", "0987654321"):
        assert secret not in dump


async def test_two_gateways_on_one_postgres_keep_one_chain(make_settings, postgres_url: str) -> None:
    with pg_schema(postgres_url) as url:
        settings = make_settings(api_keys=KEY, database_url=url)
        apps = [create_app(settings, FakeBackend(MODEL)) for _ in range(2)]
        clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://t",
                                     headers={"Authorization": f"Bearer {KEY}"}) for a in apps]
        async with apps[0].router.lifespan_context(apps[0]), apps[1].router.lifespan_context(apps[1]):
            answers = await asyncio.gather(*(clients[i % 2].post("/v1/chat/completions", json=CHAT)
                                             for i in range(60)))
            assert {a.status_code for a in answers} == {200}
            result = store.verify(apps[0].state.db)
        for client in clients:
            await client.aclose()
    assert (result.ok, result.count) == (True, 60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "tests.serve.audit_app:create", "--factory",
                               "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return server, f"http://127.0.0.1:{port}"


async def _wait_ready(http: httpx.AsyncClient, base: str, server: subprocess.Popen) -> None:
    """Until ``/healthz`` answers (the lifespan has run, tables are made)."""
    for _ in range(300):
        try:
            if (await http.get(f"{base}/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            await asyncio.sleep(0.1)
    server.kill()
    pytest.fail(f"the server did not start: {server.stderr.read().decode()[-2000:]}")


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)])  # ~10 s
async def test_kill_9_under_load_loses_no_record_of_an_answered_request(tmp_path: Path, database: str,
                                                                        request: pytest.FixtureRequest) -> None:
    """SQLite: one gateway, killed. PostgreSQL: two gateways on one database, one killed, one going on."""
    home = tmp_path / "home"
    env = {**os.environ, "CHANGJAK_HOME": str(home), "CHANGJAK_API_KEYS": KEY, "CHANGJAK_SERVE__LOG_FORMAT": "text"}
    schema = None
    if database == "postgresql":
        schema = pg_schema(request.getfixturevalue("postgres_url"))
        env["CHANGJAK_DATABASE_URL"] = schema.__enter__()
    servers: list[tuple[subprocess.Popen, str]] = []
    answered: list[str] = []
    stop = asyncio.Event()
    try:
        async with httpx.AsyncClient(timeout=5, headers={"Authorization": f"Bearer {KEY}"}) as http:
            for _ in range(1 if database == "sqlite" else 2):  # one at a time: see db.connect's create_all race
                servers.append(_start_server(env))
                await _wait_ready(http, *reversed(servers[-1]))

            async def client(n: int) -> None:
                base = servers[n % len(servers)][1]
                while not stop.is_set():
                    request_id = f"kill-{n}-{uuid.uuid4().hex[:8]}"
                    body, status = b"", None
                    try:
                        async with http.stream("POST", f"{base}/v1/chat/completions",
                                               json={**CHAT, "stream": n % 2 == 1},
                                               headers={"X-Request-Id": request_id}) as response:
                            status = response.status_code
                            async for part in response.aiter_raw():
                                body += part
                    except httpx.HTTPError:
                        stop_here = True
                    else:
                        stop_here = False
                    # an SDK has the whole answer at [DONE], even if the connection dies just after
                    whole = b"data: [DONE]" in body if n % 2 else (not stop_here and body.endswith(b"}"))
                    if status == 200 and whole:
                        answered.append(request_id)
                    if stop_here:
                        return

            load = [asyncio.create_task(client(n)) for n in range(16)]
            started = time.monotonic()
            while len(answered) < 150 and time.monotonic() - started < 20:
                await asyncio.sleep(0.02)
            os.kill(servers[0][0].pid, signal.SIGKILL)
            await asyncio.sleep(0.3)  # the survivor, if any, goes on answering
            stop.set()
            await asyncio.gather(*load)
        from changjak.settings import Settings

        engine = db.connect(Settings.load(home=home, database_url=env.get("CHANGJAK_DATABASE_URL")))
        try:
            stored = {row["request_id"] for row in store.query(engine, limit=10**6)}
            result = store.verify(engine)
        finally:
            engine.dispose()
    finally:
        for server, _ in servers:
            server.kill()
            server.wait()
        if schema is not None:
            schema.__exit__(None, None, None)
    assert len(answered) >= 50
    assert set(answered) <= stored, f"{len(set(answered) - stored)} answered requests have no record"
    assert result.ok and result.count == len(stored)
