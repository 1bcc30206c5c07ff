"""Prepacked oneDNN weights for the transformers backend on the CPU: the same numbers as the
unpacked model, the contract kept in bf16, LoRA adapters still picked per request, and a model
that cannot be packed left as it is."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from changjak.backends.inference import onednn
from changjak.backends.inference.transformers import TransformersBackend
from tests.backends.inference.contract import BackendContract
from tests.backends.inference.test_transformers import collect, text_of

pytestmark = pytest.mark.anyio
if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
    pytest.skip("this CPU has no bf16 kernels in oneDNN: nothing is packed here", allow_module_level=True)


def load_bf16(path: Path):
    from changjak.base_model import load_causal_lm

    return load_causal_lm(path, device="cpu", dtype=torch.bfloat16).eval()


def logits(model, ids) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()


def test_packing_replaces_every_linear_fuses_the_mlps_and_keeps_the_logits(tiny_model_dir: Path) -> None:
    plain, packed = load_bf16(tiny_model_dir), load_bf16(tiny_model_dir)
    ids = torch.randint(3, 1024, (3, 40), generator=torch.Generator().manual_seed(0))
    assert onednn.pack(packed) == 2 * 7 + 1  # q k v o gate up down per layer, and the head
    assert not [n for n, m in packed.named_modules() if type(m) is torch.nn.Linear]
    assert all(layer.mlp.forward.__func__ is onednn._fused_mlp_forward for layer in packed.model.layers)
    want, got = logits(plain, ids), logits(packed, ids)
    assert torch.allclose(got, want, atol=0.05 * want.abs().max().item())
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.95
    assert packed.state_dict().keys() == plain.state_dict().keys()  # the weights are still there


def test_a_model_that_cannot_be_packed_is_left_alone(tiny_model_dir: Path) -> None:
    from changjak.base_model import load_causal_lm

    fp32 = load_causal_lm(tiny_model_dir, device="cpu", dtype=torch.float32)
    assert onednn.unsupported(fp32) == "the model is float32, not bfloat16"
    assert onednn.pack(fp32) == 0
    assert isinstance(fp32.lm_head, torch.nn.Linear)
    off = TransformersBackend.load(tiny_model_dir, device="cpu", dtype="bf16", model_id="x", prepack=False)
    assert isinstance(off.model.lm_head, torch.nn.Linear)


@pytest.fixture
def packed_backend(tiny_model_dir: Path, lora_adapter_dir: Path) -> TransformersBackend:
    backend = TransformersBackend.load(tiny_model_dir, lora_adapter_dir, device="cpu", dtype="bf16", model_id="x")
    assert isinstance(backend.model.lm_head, onednn.PackedLinear)
    return backend


class TestPackedContract(BackendContract):
    """The merged model in bf16 with packed weights keeps every promise of the contract."""

    @pytest.fixture
    def backend(self, packed_backend: TransformersBackend) -> TransformersBackend:
        return packed_backend

    def tokens_generated(self, backend: TransformersBackend) -> int:
        return backend.scheduler.decoded


async def test_adapters_by_name_pack_their_base_layers_and_still_differ(
        tiny_model_dir: Path, lora_adapter_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from tests.backends.inference.conftest import build_lora_adapter

    other = build_lora_adapter(tiny_model_dir, tmp_path / "lora")  # made different: its weights scaled
    weights = load_file(other / "adapter_model.safetensors")
    save_file({k: -3 * v for k, v in weights.items()}, other / "adapter_model.safetensors")
    backend = TransformersBackend.load(tiny_model_dir, device="cpu", dtype="bf16", model_id="x",
                                       adapters={"a": lora_adapter_dir, "b": other})
    q_proj = backend.model.get_base_model().model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, onednn.PackedLinear)
    assert all(type(m) is torch.nn.Linear for m in q_proj.lora_A.values())  # LoRA's own stay plain
    a = text_of(await collect(backend, max_tokens=16, temperature=0, adapter="a"))
    b = text_of(await collect(backend, max_tokens=16, temperature=0, adapter="b"))
    base = text_of(await collect(backend, max_tokens=16, temperature=0))
    assert len({a, b, base}) == 3
    assert text_of(await collect(backend, max_tokens=16, temperature=0, adapter="a")) == a



def test_lora_matrices_stay_plain_even_in_bf16(tiny_model_dir: Path, lora_adapter_dir: Path) -> None:
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_bf16(tiny_model_dir), lora_adapter_dir).to(torch.bfloat16)
    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj
    assert q_proj.lora_A["default"].weight.dtype == torch.bfloat16  # so only the path tells them apart
    onednn.pack(model)
    assert isinstance(q_proj.base_layer, onednn.PackedLinear)
    assert type(q_proj.lora_A["default"]) is torch.nn.Linear and type(q_proj.lora_B["default"]) is torch.nn.Linear
