"""End-to-end: `changjak demo --no-serve` on the real offline Qwen2 model, then the served
champion (or challenger) answering the openai SDK in Korean. Slow: behind the `e2e` marker,
which CI runs. The dequantised base model is cached in <repo>/.changjak/models across runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from changjak import cli

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def demo_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / ".changjak"
    monkeypatch.chdir(REPO)  # the demo reads examples/data relative to the repo
    monkeypatch.setenv("CHANGJAK_HOME", str(home))
    monkeypatch.setenv("CHANGJAK_BASE_MODEL__CACHE_DIR",
                       os.environ.get("CHANGJAK_TEST_MODELS_DIR", str(REPO / ".changjak" / "models")))
    monkeypatch.setenv("CHANGJAK_EVAL__MAX_SAMPLES", "4")
    monkeypatch.setenv("CHANGJAK_EVAL__MAX_NEW_TOKENS", "16")
    monkeypatch.setenv("CHANGJAK_TRAIN__GRADIENT_ACCUMULATION_STEPS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_demo_no_serve_then_serve_in_korean(demo_env: Path) -> None:
    import asyncio

    import httpx
    import mlflow
    import openai
    from pydantic import SecretStr

    from changjak import demo
    from changjak.serve.app import create_app

    assert cli.main(["demo", "--no-serve", "--max-steps", "2"]) == 0

    summary = json.loads((demo_env / "demo-timings.json").read_text(encoding="utf-8"))
    assert summary["records"]["kept"] >= 300
    assert summary["model_version"] == "1"
    assert set(summary["eval"]["base"]) >= {"perplexity", "rougeL", "bleu", "chrf"}

    settings = demo.load_settings()
    client = mlflow.MlflowClient(tracking_uri=settings.resolved_tracking_uri,
                                 registry_uri=settings.resolved_registry_uri)
    challenger = client.get_model_version_by_alias(settings.model_name, "challenger")
    assert challenger.run_id == summary["run_id"]
    run = client.get_run(summary["run_id"])
    assert "eval.finetuned.rougeL" in run.data.metrics
    assert run.inputs.dataset_inputs, "the training data was not logged as the run's input dataset"
    if summary["eval"]["gate_passed"]:
        assert str(client.get_model_version_by_alias(settings.model_name, "champion").version) == "1"

    key = "e2e-key"
    served = settings.model_copy(update={
        "api_keys": [SecretStr(key)],
        "serve": settings.serve.model_copy(update={"model_uri": f"models:/{settings.model_name}@{summary['alias']}"}),
    })
    app = create_app(served)

    async def ask() -> str:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
                sdk = openai.AsyncOpenAI(base_url="http://testserver/v1", api_key=key, http_client=http)
                reply = await sdk.chat.completions.create(
                    model=settings.model_name, max_tokens=24, temperature=0,
                    messages=[{"role": "user", "content": "한국의 수도는 어디인가요? 한 문장으로 답해 주세요."}])
                return reply.choices[0].message.content or ""

    answer = asyncio.run(ask())
    assert any("\uac00" <= ch <= "\ud7a3" for ch in answer), f"no Hangul in the answer: {answer!r}"
