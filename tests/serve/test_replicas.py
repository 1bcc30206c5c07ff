"""Two gateway processes sharing one PostgreSQL and one Redis, as two replicas behind a balancer.

A key with ``rpm = N`` gets a burst of N + k concurrent requests spread over both: at most N are
answered in total, the rest are 429s with Retry-After. An answer cached by one replica is a hit
on the other. Every request either answered is in one audit chain that verifies.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from changjak import db
from changjak.audit import store as audit_store
from changjak.serve.keys import KeyStore
from changjak.settings import Settings
from tests.serve.conftest import free_port
from tests.test_audit import pg_schema

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]  # two real servers: ~10 s
ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = "cj-replicas-bootstrap-0123456789"
CHAT = {"model": "changjak-writer", "messages": [{"role": "user", "content": "비 오는 밤의 짧은 시"}]}
N, K = 8, 12


async def _ready(http: httpx.AsyncClient, base: str, server: subprocess.Popen) -> None:
    for _ in range(300):
        if server.poll() is not None:
            pytest.fail(f"a replica exited: {server.stderr.read().decode()[-2000:]}")
        try:
            if (await http.get(f"{base}/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            await asyncio.sleep(0.1)
    pytest.fail("a replica did not start")


async def test_two_replicas_share_limits_cache_and_one_audit_chain(tmp_path: Path, postgres_url: str,
                                                                  redis_url: str) -> None:
    prefix = f"cj-rep-{uuid.uuid4().hex[:8]}"
    with pg_schema(postgres_url) as database_url:
        settings = Settings.load(home=tmp_path / "home", database_url=database_url)
        keys = KeyStore.from_settings(settings)  # tables made once, before the replicas start
        limited, _ = keys.create("burst", "user", "acme", rpm=N)
        free, _ = keys.create("cache", "user", "acme")
        keys.close()
        env = {**os.environ, "CHANGJAK_HOME": str(tmp_path / "home"), "CHANGJAK_DATABASE_URL": database_url,
               "CHANGJAK_API_KEYS": BOOTSTRAP, "CHANGJAK_REDIS_URL": redis_url, "CHANGJAK_REDIS_PREFIX": prefix,
               "CHANGJAK_SERVE__LOG_FORMAT": "text", "CHANGJAK_SERVE__FOLLOW_ALIAS_S": "0"}
        servers = []
        try:
            for _ in range(2):
                port = free_port()
                servers.append((subprocess.Popen(
                    [sys.executable, "-m", "uvicorn", "tests.serve.audit_app:create", "--factory", "--port", str(port),
                     "--log-level", "warning"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE), f"http://127.0.0.1:{port}"))
            async with httpx.AsyncClient(timeout=30) as http:
                for server, base in servers:
                    await _ready(http, base, server)

                async def ask(i: int) -> httpx.Response:
                    return await http.post(f"{servers[i % 2][1]}/v1/chat/completions", json=CHAT,
                                           headers={"Authorization": f"Bearer {limited}",
                                                    "X-Forwarded-For": f"10.0.0.{i}"})  # never changes whose limit

                burst = await asyncio.gather(*(ask(i) for i in range(N + K)))
                statuses = [r.status_code for r in burst]
                assert statuses.count(200) <= N and statuses.count(200) + statuses.count(429) == N + K, statuses
                assert statuses.count(429) >= K
                assert all(int(r.headers["retry-after"]) >= 1 for r in burst if r.status_code == 429)

                cached = {**CHAT, "temperature": 0}
                auth = {"Authorization": f"Bearer {free}"}
                first = await http.post(f"{servers[0][1]}/v1/chat/completions", json=cached, headers=auth)
                second = await http.post(f"{servers[1][1]}/v1/chat/completions", json=cached, headers=auth)
                assert first.headers["x-changjak-cache"] == "miss" and second.headers["x-changjak-cache"] == "hit"
                assert second.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
                answered = [r.headers["x-request-id"] for r in [*burst, first, second]]
        finally:
            for server, _ in servers:
                server.terminate()
                server.wait(timeout=30)
            import redis

            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)
            client.close()
        engine = db.connect(settings)
        try:
            assert audit_store.verify(engine).ok
            ids = {row["request_id"] for row in audit_store.query(engine, limit=500)}
            assert set(answered) <= ids  # 429s and answers of both replicas, in one chain
        finally:
            engine.dispose()
