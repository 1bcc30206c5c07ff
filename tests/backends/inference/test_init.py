"""``create(name, **kwargs)`` builds the backend registered under ``name``."""

from __future__ import annotations

import pytest

from changjak.backends.inference import BACKENDS, InferenceBackend, create
from changjak.backends.inference.fake import FakeBackend
from changjak.errors import BackendError


def test_create_loads_the_named_backend_with_the_common_arguments(tmp_path) -> None:
    backend = create("fake", base_path=tmp_path, adapter_dir=None, device="cpu", dtype="auto",
                     model_id="changjak-writer")
    assert isinstance(backend, FakeBackend)
    assert isinstance(backend, InferenceBackend)
    assert backend.model_id == "changjak-writer"


def test_every_registered_backend_is_importable_and_has_load() -> None:
    from changjak.backends import load_class

    for name in BACKENDS:
        assert callable(load_class(BACKENDS, name, kind="inference").load), name


def test_an_unknown_backend_names_the_known_ones() -> None:
    with pytest.raises(BackendError, match="known: " + ", ".join(sorted(BACKENDS))):
        create("tgi", model_id="x")
