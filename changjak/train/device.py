"""Which device trains, and in which dtype.

Devices, best first: CUDA, then Apple's MPS, then the CPU. Asking for one that is not here is an
error, never a silent fallback: a run planned for a GPU would otherwise crawl on the CPU.

Dtype policy for ``auto``:

- CUDA: bf16 where the GPU supports it (Ampere and newer), else fp16 (mixed precision with a
  gradient scaler; the LoRA weights stay fp32).
- MPS: fp32. bf16 needs macOS 14+ and fp16 training on MPS is not reliably stable; fp32 always
  works and a 0.5B model fits.
- CPU: bf16 weights with fp32 LoRA weights and no autocast. Measured on the demo model
  (Qwen2.5-0.5B, LoRA r=16 on all linear layers, batch 4 x 256 tokens, 2 threads, AVX512-BF16
  CPU): fp32 23.2 s per optimizer step (44 tokens/s), bf16 weights 15.0 s (68 tokens/s), fp32
  weights under bf16 autocast 20.1 s. bf16 is the default; ``train.dtype: fp32`` is exact but
  about 1.5x slower. A CPU without native bf16 (oneDNN says so) would emulate it: fp32 there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from changjak.errors import TrainingError

if TYPE_CHECKING:
    import torch

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def pick_device(preference: str = "auto") -> str:
    """``cuda``, ``mps`` or ``cpu``: the preferred one, or the best available for ``auto``."""
    import torch

    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if preference == "auto":
        return next(device for device, ok in available.items() if ok)
    if preference not in available:
        raise TrainingError(f"unknown device {preference!r}", hint="set train.device to auto, cuda, mps or cpu")
    if not available[preference]:
        raise TrainingError(f"train.device is {preference!r} but no {preference.upper()} device is available here",
                            hint="set train.device: auto (or cpu)")
    return preference


def pick_dtype(device: str, preference: str = "auto") -> torch.dtype:
    """The training dtype for ``device``: the preferred one, or the policy in this module's docstring."""
    import torch

    if preference != "auto":
        if preference not in _DTYPES:
            raise TrainingError(f"unknown dtype {preference!r}", hint="set train.dtype to auto, bf16, fp16 or fp32")
        if preference == "fp16" and device == "cpu":
            raise TrainingError("fp16 training is not supported on the CPU", hint="set train.dtype: bf16 or fp32")
        return getattr(torch, _DTYPES[preference])
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "cpu":
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
    return torch.float32
