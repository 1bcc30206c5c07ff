"""changjak demo [--no-serve] [--max-steps N]

The whole loop on the bundled Korean sample data and the offline demo model: prepare data →
fine-tune a LoRA adapter → evaluate base vs fine-tuned → register in MLflow as
``changjak-writer@challenger`` → promote to ``champion`` if the gate passes → serve it at
http://127.0.0.1:8000/v1. Defaults come from ``changjak/demo.yaml``; ``--config`` and
``CHANGJAK_*`` variables override them. Each step's wall time is printed and saved to
``<home>/demo-timings.json``.
"""

from __future__ import annotations

import getpass
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from changjak.settings import Settings

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
console = Console()


class _Steps:
    """Runs the demo's steps in order, with a header per step and a timing table at the end."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.timings: dict[str, float] = {}

    def run(self, name: str, func: Callable[[], Any]) -> Any:
        console.rule(f"[bold]step {len(self.timings) + 1}/{self.total}: {name}")
        start = time.perf_counter()
        result = func()
        self.timings[name] = round(time.perf_counter() - start, 1)
        console.print(f"[green]✓[/] {name} in {self.timings[name]:.1f} s")
        return result

    def table(self) -> Table:
        table = Table(title="changjak demo: wall time per step")
        table.add_column("step")
        table.add_column("seconds", justify="right")
        for name, seconds in self.timings.items():
            table.add_row(name, f"{seconds:.1f}")
        table.add_row("[bold]total", f"[bold]{sum(self.timings.values()):.1f}")
        return table


def load_settings(config_file: str | None = None, **overrides: Any) -> Settings:
    """The demo's defaults, then the user's --config, then env vars and overrides."""
    files = [DEMO_CONFIG] + ([Path(config_file)] if config_file else [])
    return Settings.load(files, **overrides)


def main(settings: Settings, *, serve: bool = True, max_steps: int | None = None) -> dict[str, Any]:
    from changjak import base_model, registry
    from changjak.data import prepare
    from changjak.eval import run as eval_run
    from changjak.train import lora

    if max_steps is not None:
        settings = settings.model_copy(update={"train": settings.train.model_copy(update={"max_steps": max_steps})})
    steps = _Steps(total=6)
    steps.run("base model", lambda: base_model.resolve(settings))
    manifest = steps.run("data", lambda: prepare.main(settings))
    trained = steps.run("train (LoRA)", lambda: lora.main(settings))
    report = steps.run("evaluate base vs fine-tuned", lambda: eval_run.main(settings, run_id=trained.run_id))
    version = steps.run("register (challenger)", lambda: registry.register(settings, run_id=trained.run_id))
    if report.gate.passed:
        steps.run("promote (champion)", lambda: registry.promote(
            settings, version=version, actor=getpass.getuser(), reason="demo: gate passed"))
        alias = "champion"
    else:
        console.print("[yellow]gate failed, champion not moved:[/] " + "; ".join(report.gate.failures))
        alias = "challenger"

    summary = {
        "timings_s": steps.timings,
        "records": manifest["counts"],
        "run_id": trained.run_id,
        "train_tokens_per_s": trained.tokens_per_second,
        "eval": {"base": report.base, "finetuned": report.finetuned, "gate_passed": report.gate.passed},
        "model_version": version,
        "alias": alias,
    }
    (settings.home / "demo-timings.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    console.print(steps.table())
    console.print(f"MLflow UI: [bold]mlflow ui --backend-store-uri {settings.resolved_tracking_uri} "
                  f"--registry-store-uri {settings.resolved_registry_uri} --port 5000[/] → http://127.0.0.1:5000")
    if serve:
        _serve(settings, alias)
    return summary


def _serve(settings: Settings, alias: str) -> None:
    from changjak import serve

    if settings.api_keys:
        key_hint = "<one of CHANGJAK_API_KEYS>"
    else:
        key = "cj-demo-" + secrets.token_urlsafe(18)
        settings = settings.model_copy(update={"api_keys": [SecretStr(key)]})
        key_hint = key
    model_uri = f"models:/{settings.model_name}@{alias}"
    settings = settings.model_copy(update={"serve": settings.serve.model_copy(update={"model_uri": model_uri})})
    base_url = f"http://{settings.serve.host}:{settings.serve.port}/v1"
    console.rule("[bold]serving")
    console.print(_snippets(base_url, key_hint, settings.model_name), markup=False, highlight=False)
    serve.main(settings)


def _snippets(base_url: str, key: str, model: str) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "비 오는 날의 짧은 시를 써 줘"}]},
                      ensure_ascii=False)
    return f"""Serving {model} at {base_url}  (API key for this demo: {key})

curl:
  curl {base_url}/chat/completions -H "Authorization: Bearer {key}" \\
    -H "Content-Type: application/json" -d '{body}'

openai SDK (Python):
  from openai import OpenAI
  client = OpenAI(base_url="{base_url}", api_key="{key}")
  reply = client.chat.completions.create(model="{model}",
      messages=[{{"role": "user", "content": "비 오는 날의 짧은 시를 써 줘"}}])
  print(reply.choices[0].message.content)
"""
