"""Backends are picked by name from a plain dict and imported only when picked."""

from __future__ import annotations

import subprocess
import sys

import pytest

from changjak.backends import load_class
from changjak.errors import BackendError


def test_a_known_name_imports_its_class() -> None:
    cls = load_class({"fake": "changjak.backends.inference.fake:FakeBackend"}, "fake", kind="inference")
    assert cls.__name__ == "FakeBackend"


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(BackendError, match=r"unknown inference backend 'vllm'; known: fake, transformers"):
        load_class({"transformers": "x:Y", "fake": "x:Y"}, "vllm", kind="inference")


def test_a_missing_package_says_which_and_what_to_do() -> None:
    with pytest.raises(BackendError, match="needs the package 'not_installed_engine'") as caught:
        load_class({"engine": "not_installed_engine.api:Engine"}, "engine", kind="inference")
    assert "pyproject.toml" in caught.value.hint


def test_importing_the_backends_does_not_import_torch() -> None:
    code = ("import sys, changjak.backends.inference, changjak.serve.app; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
