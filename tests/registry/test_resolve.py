"""What serving does at start-up: a model URI becomes a cached adapter plus its pinned base, and
loading them back answers exactly like the adapter that was trained (greedy decoding)."""

from __future__ import annotations

import pytest
import torch

from changjak import base_model, registry
from changjak.errors import RegistryError
from changjak.settings import Settings
from tests.registry.conftest import Store

MESSAGES = [{"role": "user", "content": "소설의 첫 문장을 써 주세요."}]


def _greedy(model, tokenizer) -> list[int]:
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def test_resolve_champion_and_version_then_serve_the_same_answers(store: Store) -> None:
    from peft import PeftModel

    settings = store.settings.model_copy(update={"model_name": "changjak-writer"})
    registry.register(settings, run_id=store.passed.run_id)
    registry.promote(settings, actor="lee", reason="serve it")

    champion = registry.resolve(settings, "models:/changjak-writer@champion")
    pinned = registry.resolve(settings, "models:/changjak-writer/1")

    assert (champion.name, champion.version, champion.alias, champion.run_id) == (
        "changjak-writer", "1", "champion", store.passed.run_id)
    assert pinned.alias is None and pinned.adapter_dir == champion.adapter_dir
    assert champion.adapter_dir.is_relative_to(settings.home / "registry")
    assert (champion.adapter_dir / "adapter_model.safetensors").is_file()
    # A version never changes: the cached copy is reused, not downloaded again.
    (champion.adapter_dir / "marker").write_text("kept")
    assert (registry.resolve(settings, "models:/changjak-writer@challenger").adapter_dir / "marker").is_file()

    base = base_model.resolve(settings, source=champion.base_source, expected_sha256=champion.base_sha256)
    served = PeftModel.from_pretrained(base_model.load_causal_lm(base.path, device="cpu", dtype=torch.float32),
                                       champion.adapter_dir).eval()
    tokenizer = base_model.load_tokenizer(base.path)
    expected = _greedy(store.passed.model, store.passed.tokenizer)
    assert _greedy(served, tokenizer) == expected
    with served.disable_adapter():
        assert _greedy(served, tokenizer) != expected  # the adapter is what makes the answer


def test_missing_or_malformed_addresses(store: Store, settings: Settings) -> None:
    name = settings.model_name
    with pytest.raises(RegistryError, match=f"no registered model '{name}'"):
        registry.resolve(settings, f"models:/{name}@champion")
    registry.register(settings, run_id=store.passed.run_id)

    with pytest.raises(RegistryError, match="has no alias 'champion'") as e:
        registry.resolve(settings, f"models:/{name}@champion")
    assert "changjak promote" in e.value.hint
    with pytest.raises(RegistryError, match="has no alias 'staging'"):
        registry.resolve(settings, f"models:/{name}@staging")
    with pytest.raises(RegistryError, match="has no version 99"):
        registry.resolve(settings, f"models:/{name}/99")
    for uri in ("models:/only-a-name", f"runs:/{store.passed.run_id}/adapter", f"models:/{name}/latest"):
        with pytest.raises(RegistryError, match="is not a model URI"):
            registry.resolve(settings, uri)
