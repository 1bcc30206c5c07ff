"""Inference backends by name: ``create("transformers", base_path=..., adapter_dir=..., ...)``.

The Protocol every backend follows is in :mod:`.base`; ``fake`` answers by echoing the last user
message and stands in for a model in tests of the HTTP layer.
"""

from __future__ import annotations

from typing import Any

from changjak.backends import load_class
from changjak.backends.inference.base import GenerationChunk, GenerationParams, InferenceBackend

BACKENDS = {
    "transformers": "changjak.backends.inference.transformers:TransformersBackend",
    "fake": "changjak.backends.inference.fake:FakeBackend",
    "llamacpp": "changjak.backends.inference.llamacpp:LlamaCppBackend",
    "openai": "changjak.backends.inference.openai_upstream:OpenAIUpstreamBackend",
    "vllm": "changjak.backends.inference.vllm:VllmBackend",
}

__all__ = ["BACKENDS", "GenerationChunk", "GenerationParams", "InferenceBackend", "create"]


def create(name: str, **kwargs: Any) -> InferenceBackend:
    """Load the backend registered as ``name`` (its heavy imports happen only now)."""
    return load_class(BACKENDS, name, kind="inference").load(**kwargs)
