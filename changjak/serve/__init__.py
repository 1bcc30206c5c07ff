"""changjak serve [--host H] [--port P] [--backend NAME] [--model-uri models:/changjak-writer@champion]

Serves the registered model through the OpenAI-compatible API (``/v1/chat/completions``,
``/v1/models``) with ``/healthz`` and ``/readyz`` for probes. Clients need one of the keys in
``CHANGJAK_API_KEYS``. The model is loaded before the port opens, so a bad model URI or a missing
base model fails here with one line saying what to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from changjak.settings import Settings


def main(settings: Settings) -> None:
    """Load the model, then serve it with uvicorn on ``settings.serve.host:port`` until stopped."""
    import asyncio

    import uvicorn
    from rich.console import Console

    from changjak.safety import logs
    from changjak.serve.app import create_app, load_model

    console = Console()
    console.print(f"loading [bold]{settings.serve.model_uri}[/] with the {settings.serve.backend} backend …")
    served = load_model(settings)
    app = create_app(settings, served.backend, model_version=served.version)
    try:
        console.print(f"serving [bold]{served.model_id}[/] (version {served.version}) at "
                      f"[bold]http://{settings.serve.host}:{settings.serve.port}/v1[/]")
        if not settings.api_keys:
            console.print("[yellow]no API keys configured: every /v1 request will get 401; "
                          "set CHANGJAK_API_KEYS[/]")
        config = uvicorn.Config(app, host=settings.serve.host, port=settings.serve.port, log_level="info")
        logs.install()  # after uvicorn has set up its handlers: no PII in any log line
        uvicorn.Server(config).run()
    finally:
        asyncio.run(served.backend.aclose())
