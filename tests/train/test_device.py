"""Device and dtype policy, with the hardware faked through torch's availability checks."""

from __future__ import annotations

import pytest
import torch

from changjak.errors import TrainingError
from changjak.train.device import pick_device, pick_dtype


@pytest.fixture
def hardware(monkeypatch: pytest.MonkeyPatch):
    def fake(*, cuda: bool = False, mps: bool = False, cuda_bf16: bool = True, cpu_bf16: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: cpu_bf16)

    return fake


@pytest.mark.parametrize(("cuda", "mps", "expected"), [
    (True, True, "cuda"), (False, True, "mps"), (False, False, "cpu"),
])
def test_auto_prefers_cuda_then_mps_then_cpu(hardware, cuda: bool, mps: bool, expected: str) -> None:
    hardware(cuda=cuda, mps=mps)
    assert pick_device("auto") == expected


def test_an_explicit_device_is_honoured_or_refused_with_a_hint(hardware) -> None:
    hardware(cuda=True, mps=False)
    assert pick_device("cpu") == "cpu"
    assert pick_device("cuda") == "cuda"
    with pytest.raises(TrainingError, match="no MPS device") as err:
        pick_device("mps")
    assert "train.device" in err.value.hint
    with pytest.raises(TrainingError, match="unknown device"):
        pick_device("tpu")


@pytest.mark.parametrize(("device", "hw", "expected"), [
    ("cuda", {"cuda_bf16": True}, torch.bfloat16),
    ("cuda", {"cuda_bf16": False}, torch.float16),
    ("mps", {}, torch.float32),
    ("cpu", {"cpu_bf16": True}, torch.bfloat16),
    ("cpu", {"cpu_bf16": False}, torch.float32),
])
def test_auto_dtype_policy(hardware, device: str, hw: dict, expected: torch.dtype) -> None:
    hardware(cuda=device == "cuda", mps=device == "mps", **hw)
    assert pick_dtype(device, "auto") == expected


def test_an_explicit_dtype_wins_except_fp16_on_cpu(hardware) -> None:
    hardware(cpu_bf16=True)
    assert pick_dtype("cpu", "fp32") == torch.float32
    assert pick_dtype("cuda", "fp16") == torch.float16
    with pytest.raises(TrainingError, match="fp16 training is not supported on the CPU"):
        pick_dtype("cpu", "fp16")
