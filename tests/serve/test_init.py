"""``changjak serve``: load the model first (fail fast), then run uvicorn, then close the model."""

from __future__ import annotations

import asyncio
import io
import logging
import signal

import httpx
import pytest
import uvicorn

from changjak import serve
from changjak.backends.inference.fake import FakeBackend
from changjak.errors import RegistryError
from changjak.safety.logs import MaskPii
from changjak.serve import app as app_module
from changjak.serve.deps import ServedModel
from tests.serve.conftest import KEY, MODEL


@pytest.fixture(autouse=True)
def restore_process_state():
    """main() sets a SIGTERM handler and a root log handler for the process: undo both."""
    sigterm, root = signal.getsignal(signal.SIGTERM), list(logging.getLogger().handlers)
    level = logging.getLogger().level
    yield
    signal.signal(signal.SIGTERM, sigterm)
    logging.getLogger().handlers[:] = root
    logging.getLogger().setLevel(level)


async def readiness(app) -> dict:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    async with app.router.lifespan_context(app), http:
        return (await http.get("/readyz")).json()


def test_main_serves_the_loaded_model_where_configured_and_closes_it(
        monkeypatch: pytest.MonkeyPatch, make_settings, capsys: pytest.CaptureFixture) -> None:
    fake = FakeBackend(MODEL)
    monkeypatch.setattr(app_module, "load_model", lambda settings: ServedModel(fake, "7", 0))
    served: dict = {}

    def run(server: uvicorn.Server, *_) -> None:
        config = server.config
        masked = all(any(isinstance(f, MaskPii) for f in h.filters) for h in logging.getLogger("uvicorn").handlers)
        served.update(host=config.host, port=config.port, ready=asyncio.run(readiness(config.app)), masked=masked)

    # uvicorn's own logging set-up (dictConfig) would close handlers pytest and absl hold: stand in for it
    handler = logging.StreamHandler(io.StringIO())
    monkeypatch.setattr(uvicorn.Config, "configure_logging", lambda config: logging.getLogger("uvicorn").addHandler(handler))
    monkeypatch.setattr(uvicorn.Server, "run", run)
    try:
        serve.main(make_settings(api_keys=KEY, serve={"host": "0.0.0.0", "port": 8123}))
    finally:
        logging.getLogger("uvicorn").removeHandler(handler)

    assert served == {"host": "0.0.0.0", "port": 8123, "masked": True,
                      "ready": {"status": "ready", "model": MODEL, "version": "7"}}
    assert "http://0.0.0.0:8123/v1" in capsys.readouterr().out
    assert fake.closed


def test_main_fails_before_opening_the_port_when_the_model_cannot_load(monkeypatch, make_settings) -> None:
    def load_model(settings):
        raise RegistryError("no registered model 'changjak-writer'", hint="run `changjak register` first")

    monkeypatch.setattr(app_module, "load_model", load_model)
    monkeypatch.setattr(uvicorn.Server, "run", lambda *a, **k: pytest.fail("uvicorn must not start"))
    with pytest.raises(RegistryError, match="changjak register"):
        serve.main(make_settings(api_keys=KEY))
