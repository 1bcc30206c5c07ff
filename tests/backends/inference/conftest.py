"""The tiny Qwen2 served by the transformers backend, with a LoRA adapter that changes its output."""

from __future__ import annotations

from pathlib import Path

import pytest

from changjak.backends.inference.transformers import TransformersBackend


def build_lora_adapter(base_dir: Path, out_dir: Path) -> Path:
    """Save a LoRA adapter for the model in ``base_dir`` whose weights are random, not zero, so it matters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out_dir)
    return out_dir


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def lora_adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("lora"))


@pytest.fixture
def tiny_backend(tiny_model_dir: Path, lora_adapter_dir: Path) -> TransformersBackend:
    """The tiny model with the adapter merged, on CPU in fp32."""
    return TransformersBackend.load(tiny_model_dir, lora_adapter_dir, device="cpu", dtype="fp32",
                                    model_id="changjak-writer")


@pytest.fixture(scope="session")
def eos_first_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2 with its final norm zeroed: every logit is 0, so greedy picks id 0, ``<|endoftext|>``,
    an end of sequence, at every step; ruled out, it picks id 1 (``<|im_start|>``). What ``min_tokens`` is for."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("eos-first")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.zero_()
    model.save_pretrained(out)
    for path in tiny_model_dir.iterdir():  # the tokenizer's files
        if not (out / path.name).exists():
            shutil.copy(path, out / path.name)
    return out
