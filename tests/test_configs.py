"""Every shipped config under configs/ (recursively) is valid Settings, and the training recipes say
how to run themselves and mean what their names say."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from changjak.settings import Settings

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL = sorted(CONFIGS.rglob("*.yaml")) + sorted(CONFIGS.rglob("*.yml"))
RECIPES = sorted((CONFIGS / "qwen2-0.5b").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("CHANGJAK_")]:
        monkeypatch.delenv(name)


def test_configs_are_found() -> None:
    assert len(RECIPES) == 4
    assert set(RECIPES) <= set(ALL)


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_loads_as_settings(path: Path) -> None:
    assert isinstance(Settings.load(path), Settings)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_says_how_to_run_it_and_matches_its_name(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    settings = Settings.load(path)
    assert f"changjak train --config configs/qwen2-0.5b/{path.name}" in text
    device = path.stem.split("-")[-1]
    assert settings.train.device == device
    assert settings.train.quantization == ("4bit" if path.stem.startswith("qlora") else "none")
    assert settings.train.lora.alpha == 2 * settings.train.lora.r  # the convention the comments state
    assert "#" in text.split("alpha:")[1].splitlines()[0]  # trade-offs are commented beside values
