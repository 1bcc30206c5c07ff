"""Log lines carry their request: one JSON object per line with the request id the client saw,
tenant, key prefix, and (on the access line) route, status and latency; never PII."""

from __future__ import annotations

import io
import json
import logging

import pytest

from changjak.backends.inference.fake import FakeBackend
from changjak.safety.logs import MaskPii
from changjak.serve import logging as serve_logging
from changjak.serve.app import create_app
from tests.serve.conftest import MODEL, serving

pytestmark = pytest.mark.anyio


@pytest.fixture
def lines():
    """Every record logged during the test, formatted as the server formats them."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(serve_logging.JsonFormatter())
    handler.addFilter(MaskPii())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in out.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(level)


class ChattyBackend(FakeBackend):
    async def generate(self, messages, params):
        logging.getLogger("changjak.test").info("generating for 010-1234-5678")  # PII in a log call
        async for chunk in super().generate(messages, params):
            yield chunk


async def test_every_line_of_a_request_has_its_id_tenant_and_key_prefix(serve_settings, lines) -> None:
    app = create_app(serve_settings, ChattyBackend(MODEL))
    async with serving(app) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "안녕"}], extra_headers={"X-Request-Id": "trace-42"})
    assert raw.headers["x-request-id"] == "trace-42"
    mine = [line for line in lines() if line["request_id"] == "trace-42"]
    inner = next(line for line in mine if line["logger"] == "changjak.test")
    assert "010-1234-5678" not in inner["message"] and inner["level"] == "INFO"
    access = next(line for line in mine if line["logger"] == "changjak.access")
    assert access["message"] == "POST /v1/chat/completions 200"
    assert (access["route"], access["status"], access["tenant"]) == ("/v1/chat/completions", 200, "*")
    assert access["key_prefix"].startswith("bootstrap_") and access["latency_ms"] >= 0
    assert set(access) >= {"time", "level", "logger", "message", "request_id", "tenant", "key_prefix"}


async def test_a_generated_id_is_echoed_and_logged_and_outside_requests_it_is_null(serve_settings, lines) -> None:
    app = create_app(serve_settings, FakeBackend(MODEL))
    async with serving(app) as sdk:
        response = await sdk._client.get("http://testserver/healthz")
    logging.getLogger("changjak.test").info("between requests")
    rid = response.headers["x-request-id"]
    found = lines()
    assert rid.startswith("req_") and any(line["request_id"] == rid and line.get("route") == "/healthz"
                                          for line in found)
    assert next(line for line in found if line["message"] == "between requests")["request_id"] is None


def test_configure_puts_one_masked_handler_on_root_in_either_format(capsys) -> None:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        serve_logging.configure("json")
        handler = serve_logging.configure("text")  # again: replaces, never stacks
        ours = [h for h in root.handlers if getattr(h, "_changjak", False)]
        assert ours == [handler] and any(isinstance(f, MaskPii) for f in handler.filters)
        logging.getLogger("changjak.test").warning("주민번호 900101-1234567")
        err = capsys.readouterr().err
        assert "WARNING changjak.test [-]" in err and "900101-1234567" not in err
    finally:
        root.handlers[:] = before
        root.setLevel(level)
