"""A running server follows its alias: a live adapter load where the backend can, a clear 'restart' where not."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from changjak import registry
from changjak.backends.inference.fake import FakeBackend
from changjak.registry.resolve import ResolvedModel
from changjak.serve import follow
from changjak.serve.app import create_app
from tests.serve.conftest import KEY, MODEL, serving

pytestmark = pytest.mark.anyio


class LiveLoRA(FakeBackend):
    """A fake that, like the vLLM backend, loads adapters while serving."""

    def __init__(self) -> None:
        super().__init__(MODEL)
        self.added: list[tuple[str, Path, bool]] = []

    async def add_adapter(self, name: str, path: Path, *, default: bool = False) -> None:
        self.added.append((name, Path(path), default))


@pytest.fixture
def registry_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    """A registry whose champion the test moves; versions 1-2 share a base, 3 has another."""
    state = {"champion": "1", "calls": 0}
    bases = {"1": "sha-a", "2": "sha-a", "3": "sha-b"}

    def resolve(settings, uri: str) -> ResolvedModel:
        state["calls"] += 1
        version = state["champion"] if uri.endswith("@champion") else uri.rsplit("/", 1)[1]
        return ResolvedModel(MODEL, version, None, f"run{version}", tmp_path / f"v{version}", "demo", bases[version])

    monkeypatch.setattr(registry, "resolve", resolve)
    return state


async def test_a_move_is_followed_live_and_the_version_shows_everywhere(make_settings, registry_state) -> None:
    backend = LiveLoRA()
    app = create_app(make_settings(api_keys=KEY, serve={"follow_alias_s": 0}), backend, model_version="1")
    async with serving(app) as sdk:
        assert await follow.follow(app) is None  # nothing moved
        registry_state["champion"] = "2"
        assert await follow.follow(app) == "2"
        assert backend.added[-1][0] == "v2" and backend.added[-1][2] is True
        raw = await sdk.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "안녕"}])
        assert raw.headers["x-changjak-model-version"] == "2" and raw.parse().system_fingerprint.endswith("-v2")


async def test_another_base_or_a_backend_without_live_adapters_keeps_serving_and_says_restart(
        make_settings, registry_state, caplog: pytest.LogCaptureFixture) -> None:
    for backend, champion in ((LiveLoRA(), "3"), (FakeBackend(MODEL), "2")):
        registry_state["champion"] = "1"
        app = create_app(make_settings(api_keys=KEY, serve={"follow_alias_s": 0}), backend, model_version="1")
        async with serving(app):
            registry_state["champion"] = champion
            with caplog.at_level(logging.WARNING, logger="changjak.serve.follow"):
                assert await follow.follow(app) is None
            assert app.state.served.version == "1" and "restart it to follow" in caplog.text
            caplog.clear()


async def test_the_poller_follows_moves_made_elsewhere(make_settings, registry_state) -> None:
    import asyncio

    backend = LiveLoRA()
    app = create_app(make_settings(api_keys=KEY, serve={"follow_alias_s": 0.05}), backend, model_version="1")
    async with serving(app):
        registry_state["champion"] = "2"  # as `changjak promote` in another process would
        for _ in range(100):
            if app.state.served.version == "2":
                break
            await asyncio.sleep(0.02)
        assert app.state.served.version == "2"


async def test_a_server_not_built_from_the_registry_never_polls(make_settings, registry_state) -> None:
    app = create_app(make_settings(api_keys=KEY, serve={"follow_alias_s": 0.01}), LiveLoRA(), model_version=None)
    async with serving(app):
        assert await follow.follow(app) is None
    assert registry_state["calls"] == 0
