"""``changjak export`` on the tiny Qwen2 and a registered random LoRA adapter: the merged safetensors
answer exactly as base + adapter do, the GGUF files load in llama.cpp and write text, and each
export is a new registry version whose tags say what it is and which ``serve --backend llamacpp``
loads. GGUF tests need llama-cpp-python: skipped without it, failed under CI=true.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from changjak import export, registry, tracking
from changjak.errors import ConfigError
from changjak.settings import LlamaCppSettings, Settings
from tests.backends.inference.test_llamacpp import require_llama_cpp
from tests.eval.conftest import FakeTrainingRun, log_training_run, write_test_split


@dataclass(frozen=True)
class Registered:
    settings: Settings
    run: FakeTrainingRun
    uri: str  # models:/<name>/<version> of the adapter


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Registered:
    home = tmp_path_factory.mktemp("export") / ".changjak"
    settings = Settings.load(home=home, base_model={"source": str(tiny_model_dir)}, model_name="writer-export")
    write_test_split(settings.data_dir)
    run = log_training_run(settings, seed=1, eval_passed=True)
    version = registry.register(settings, run_id=run.run_id)
    return Registered(settings, run, f"models:/writer-export/{version}")


def version_tags(settings: Settings, version: str) -> dict[str, str]:
    return dict(tracking.client(settings).get_model_version(settings.model_name, version).tags)


def test_the_merged_safetensors_answer_exactly_as_base_plus_adapter(registered: Registered, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    result = export.main(registered.settings, fmt="merged", model_uri=registered.uri, out=tmp_path, samples=4)
    assert (result.model_path / "model.safetensors").is_file()
    assert (result.model_path / "tokenizer.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(result.model_path, dtype=torch.float32).eval()
    ids = registered.run.tokenizer("주인공은 비 내리는 골목에서", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert torch.allclose(merged(ids).logits, registered.run.model(ids).logits, atol=1e-5)
    assert not any("lora" in name for name, _ in merged.named_parameters())

    tags = version_tags(registered.settings, result.version)
    assert (tags["format"], tags["quantization"], float(tags["perplexity_delta"])) == ("merged", "float", 0.0)
    assert tags["exported_from"] == registered.uri.rsplit("/", 1)[1]
    assert tags["gate_passed"] == "true"  # the source version's evaluation travels with it


def test_merged_f16_is_saved_in_float16(registered: Registered, tmp_path: Path) -> None:
    result = export.main(registered.settings, fmt="merged", quant="f16", model_uri=registered.uri, out=tmp_path,
                         samples=2, register=False)
    assert json.loads((result.model_path / "config.json").read_text())["dtype"] == "float16"
    assert result.version is None
    assert abs(result.perplexity["delta"]) < 0.01 * result.perplexity["reference"]


@pytest.mark.parametrize(("fmt", "quant"), [("merged", "q8_0"), ("gguf", "q2_k"), ("onnx", None)])
def test_an_impossible_format_and_quant_is_refused_before_any_work(make_settings, fmt: str, quant: str) -> None:
    with pytest.raises(ConfigError):
        export.main(make_settings(), fmt=fmt, quant=quant)


def test_the_cli_refuses_quantising_merged_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from changjak import cli

    monkeypatch.setenv("CHANGJAK_HOME", str(tmp_path))
    assert cli.main(["export", "--format", "merged", "--quant", "q8_0"]) == 2


@pytest.mark.parametrize(("quant", "tolerance"), [("f16", 0.01), ("q8_0", 0.05), ("q4_k_m", 0.5)])
def test_gguf_exports_load_in_llamacpp_write_text_and_are_registered(
        registered: Registered, tmp_path: Path, quant: str, tolerance: float) -> None:
    require_llama_cpp()
    import asyncio

    from changjak.backends.inference.llamacpp import LlamaCppBackend
    from tests.backends.inference.contract import ask, collect, text_of

    result = export.main(registered.settings, fmt="gguf", quant=quant, model_uri=registered.uri, out=tmp_path,
                         samples=4)
    assert result.model_path == tmp_path / f"model-{quant}.gguf" and result.model_path.is_file()
    ppl = result.perplexity
    assert abs(ppl["delta"]) < tolerance * ppl["reference"], ppl  # llama.cpp agrees with transformers

    tags = version_tags(registered.settings, result.version)
    assert (tags["format"], tags["quantization"]) == ("gguf", quant)
    assert float(tags["perplexity_delta"]) == pytest.approx(ppl["delta"], rel=1e-4, abs=1e-6)
    assert tags["base_model_sha256"]  # resolvable like any version

    # What `changjak serve --backend llamacpp --model-uri models:/<name>/<N>` does:
    resolved = registry.resolve(registered.settings, f"models:/{registered.settings.model_name}/{result.version}")
    backend = LlamaCppBackend.load(None, resolved.adapter_dir, model_id="writer",
                                   options=LlamaCppSettings(n_threads=1, n_ctx=256))

    async def reply() -> list:
        try:
            return await collect(backend, ask("소설의 첫 문장을 써 주세요"), max_tokens=8, temperature=0)
        finally:
            await backend.aclose()

    chunks = asyncio.run(reply())
    assert text_of(chunks) and chunks[-1].completion_tokens > 0


def test_serve_loads_the_registered_gguf_with_the_llamacpp_backend(registered: Registered, tmp_path: Path) -> None:
    require_llama_cpp()
    import asyncio

    from changjak.serve.app import load_model

    result = export.main(registered.settings, fmt="gguf", quant="q8_0", model_uri=registered.uri, out=tmp_path,
                         samples=2)
    uri = f"models:/{registered.settings.model_name}/{result.version}"
    serve = registered.settings.serve
    settings = registered.settings.model_copy(update={"serve": serve.model_copy(update={
        "backend": "llamacpp", "model_uri": uri, "llamacpp": serve.llamacpp.model_copy(update={"parallel": 2})})})
    served = load_model(settings)
    try:
        assert type(served.backend).__name__ == "LlamaCppBackend" and served.version == result.version
        assert served.backend.batcher.slots == 2  # the settings' own section reached the backend
    finally:
        asyncio.run(served.backend.aclose())
