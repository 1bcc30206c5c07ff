"""changjak serve [--host H] [--port P] [--backend NAME] [--model-uri models:/changjak-writer@champion]
[--workers N]

Serves the registered model through the OpenAI-compatible API (``/v1/chat/completions``,
``/v1/models``) with ``/healthz``, ``/readyz`` and ``/metrics``. Clients need an API key (see
``changjak keys``; ``CHANGJAK_API_KEYS`` bootstraps the first admin). With one worker the model is
loaded before the port opens, so a bad model URI or a missing base model fails here with one line
saying what to do. With ``--workers N`` uvicorn runs N processes, each building the app with
:func:`factory` from the same settings (passed to them through the environment); whatever they
must share (keys, limits, cache, audit) lives in the database and Redis, and ``/metrics``
aggregates all of them (prometheus_client's multiprocess mode in a fresh temporary directory).

SIGTERM drains: new requests get 503, in-flight ones and streams get
``settings.serve.drain_timeout_s`` to finish, then the process exits 0 (see
``changjak.serve.lifecycle``). Logs are one JSON object per line (``settings.serve.log_format``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from changjak.settings import Settings

WORKER_SETTINGS_ENV = "_CHANGJAK_WORKER_SETTINGS"  # {"config": [paths], "overrides": {...}} for --workers


def main(settings: Settings, *, config_file: str | Path | None = None) -> None:
    """Serve with uvicorn on ``settings.serve.host:port`` until SIGTERM or Ctrl+C."""
    from rich.console import Console

    from changjak.serve import logging as serve_logging

    signal.signal(signal.SIGTERM, _exit_cleanly)  # what uvicorn re-raises once it has drained
    serve_logging.configure(settings.serve.log_format)
    console = Console()
    if not settings.api_keys:
        console.print("[yellow]no bootstrap API keys (CHANGJAK_API_KEYS): only managed keys "
                      "(changjak keys create) are accepted[/]")
    if settings.serve.workers > 1:
        _serve_workers(settings, config_file, console)
    else:
        _serve_one(settings, console)


def factory() -> FastAPI:
    """The app of one ``--workers`` process: settings rebuilt as the parent process had them."""
    from changjak.serve import logging as serve_logging
    from changjak.serve.app import create_app
    from changjak.settings import Settings

    passed = json.loads(os.environ.get(WORKER_SETTINGS_ENV, "{}"))
    settings = Settings.load(passed.get("config") or None, **passed.get("overrides", {}))
    serve_logging.configure(settings.serve.log_format)
    return create_app(settings)


def _serve_one(settings: Settings, console: Any) -> None:
    import asyncio

    import uvicorn

    from changjak.safety import logs
    from changjak.serve.app import create_app, load_model

    console.print(f"loading [bold]{settings.serve.model_uri}[/] with the {settings.serve.backend} backend …")
    served = load_model(settings)
    app = create_app(settings, served.backend, model_version=served.version)
    try:
        console.print(f"serving [bold]{served.model_id}[/] (version {served.version}) at "
                      f"[bold]http://{settings.serve.host}:{settings.serve.port}/v1[/]")
        config = _config(app, settings)
        logs.install()  # on whatever handlers uvicorn's set-up left: no PII in any log line
        uvicorn.Server(config).run()
    finally:
        asyncio.run(served.backend.aclose())


def _serve_workers(settings: Settings, config_file: str | Path | None, console: Any) -> None:
    import shutil
    import tempfile

    from uvicorn.supervisors import Multiprocess

    from changjak.monitor.metrics import MULTIPROC_ENV

    serve = settings.serve.model_dump(mode="json", exclude={"upstream_api_key"})  # secrets: env/config
    os.environ[WORKER_SETTINGS_ENV] = json.dumps({
        "config": [str(config_file)] if config_file else [],
        "overrides": {"serve": serve, "home": str(settings.home)}})
    metrics_dir = tempfile.mkdtemp(prefix="changjak-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    console.print(f"serving with {settings.serve.workers} workers at "
                  f"[bold]http://{settings.serve.host}:{settings.serve.port}/v1[/] (each loads the model)")
    try:
        config = _config("changjak.serve:factory", settings, factory=True, workers=settings.serve.workers)
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _config(app: Any, settings: Settings, **kwargs: Any) -> Any:
    import uvicorn

    return uvicorn.Config(app, host=settings.serve.host, port=settings.serve.port, log_config=None,
                          access_log=False,  # changjak.access logs each request, with its id
                          timeout_graceful_shutdown=settings.serve.drain_timeout_s, **kwargs)


def _exit_cleanly(signum: int, frame: Any) -> None:
    sys.exit(0)
