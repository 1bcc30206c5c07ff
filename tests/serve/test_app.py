"""create_app without a backend: the lifespan resolves the registered version, loads it, closes it."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

import changjak
from changjak.backends import inference
from changjak.errors import RegistryError
from changjak.serve.app import create_app
from tests.serve.conftest import KEY, MODEL, serving

pytestmark = pytest.mark.anyio


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple]:
    """Stand-ins for the registry and base-model modules, recording what the app asked them."""
    calls: list[tuple] = []
    resolved = types.SimpleNamespace(name=MODEL, version="3", alias="challenger", run_id="run-1",
                                     adapter_dir=tmp_path / "adapter", base_source="Qwen/Qwen2-0.5B-Instruct",
                                     base_sha256="ab" * 32)

    def resolve_version(settings, uri: str):
        calls.append(("registry", uri))
        if uri.endswith("@missing"):
            raise RegistryError("no version has the alias 'missing'")
        return resolved

    def resolve_base(settings, *, source: str, expected_sha256: str | None):
        calls.append(("base", source, expected_sha256))
        return types.SimpleNamespace(source=source, path=tmp_path / "base", sha256=expected_sha256)

    real_create = inference.create

    def create(name: str, **kwargs):
        calls.append(("backend", name, kwargs))
        return real_create(name, **kwargs)

    for name, func in (("registry", resolve_version), ("base_model", resolve_base)):
        module = types.ModuleType(f"changjak.{name}")
        module.resolve = func
        monkeypatch.setitem(sys.modules, f"changjak.{name}", module)
        monkeypatch.setattr(changjak, name, module, raising=False)
    monkeypatch.setattr(inference, "create", create)
    return calls


async def test_the_lifespan_serves_the_registered_version_and_closes_it(make_settings, calls, tmp_path) -> None:
    settings = make_settings(api_keys=KEY, serve={"backend": "fake", "device": "cpu",
                                                  "model_uri": f"models:/{MODEL}@challenger"})
    app = create_app(settings)
    async with serving(app) as sdk:
        backend = app.state.served.backend
        raw = await sdk.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "안녕하세요"}])
        reply = raw.parse()
    assert reply.choices[0].message.content == "안녕하세요"
    assert reply.system_fingerprint == f"{MODEL}-v3"
    assert raw.headers["x-changjak-model-version"] == "3"
    assert calls == [
        ("registry", f"models:/{MODEL}@challenger"),
        ("base", "Qwen/Qwen2-0.5B-Instruct", "ab" * 32),
        ("backend", "fake", {"base_path": tmp_path / "base", "adapter_dir": tmp_path / "adapter",
                             "device": "cpu", "dtype": "auto", "model_id": MODEL}),
    ]
    assert backend.closed
    assert app.state.served is None


async def test_a_model_that_cannot_be_resolved_fails_the_startup(make_settings, calls) -> None:
    app = create_app(make_settings(api_keys=KEY, serve={"backend": "fake", "model_uri": f"models:/{MODEL}@missing"}))
    with pytest.raises(RegistryError, match="missing"):
        async with app.router.lifespan_context(app):
            pass


async def test_a_given_backend_is_left_open_for_its_owner(app, fake) -> None:
    async with serving(app):
        assert app.state.served.fingerprint is None
    assert not fake.closed


async def test_the_safety_checks_are_built_before_the_first_request(app) -> None:
    """What the checks build on first use (the injection cues' regexes) is built at start-up, so the
    first request after a deploy is not the one that pays ~0.3 s for it."""
    from changjak.safety import injection

    injection._compiled.cache_clear()
    async with serving(app):
        assert injection._compiled.cache_info().currsize == 1  # no request has been made
