from pathlib import Path

import pytest

from changjak.errors import ConfigError
from changjak.settings import Settings


def test_defaults_are_embedded(tmp_path: Path) -> None:
    s = Settings.load(home=tmp_path / "h")
    assert s.resolved_tracking_uri == f"sqlite:///{(tmp_path / 'h' / 'mlflow.db').resolve()}"
    assert s.resolved_registry_uri == s.resolved_tracking_uri
    assert s.resolved_database_url.startswith("sqlite:///")
    assert s.data_dir == tmp_path / "h" / "data"
    assert s.base_model.source == "Qwen/Qwen2-0.5B-Instruct"


def test_env_nesting_and_precedence_over_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  max_steps: 5\n  lora: {r: 8}\n", encoding="utf-8")
    monkeypatch.setenv("CHANGJAK_TRAIN__MAX_STEPS", "7")
    s = Settings.load(cfg)
    assert s.train.max_steps == 7  # env beats the file
    assert s.train.lora.r == 8  # the file beats defaults, and nested keys merge
    assert s.train.lora.alpha == 32


def test_later_files_override_earlier(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("eval: {max_samples: 3, max_new_tokens: 9}\n", encoding="utf-8")
    b.write_text("eval: {max_samples: 4}\n", encoding="utf-8")
    s = Settings.load([a, b])
    assert (s.eval.max_samples, s.eval.max_new_tokens) == (4, 9)


def test_every_problem_listed_and_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHANGJAK_TRAIN__LEARNING_RATE", "-1")
    monkeypatch.setenv("CHANGJAK_SERVE__PORT", "http")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  val_fraction: 2\n  typo_field: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Settings.load(cfg)
    text = str(info.value)
    for name in ("CHANGJAK_TRAIN__LEARNING_RATE", "CHANGJAK_SERVE__PORT",
                 "CHANGJAK_DATA__VAL_FRACTION", "CHANGJAK_DATA__TYPO_FIELD"):
        assert name in text
    assert len(info.value.problems) == 4


def test_api_keys_comma_separated_and_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHANGJAK_API_KEYS", " k1 , k2,,")
    s = Settings.load()
    assert [k.get_secret_value() for k in s.api_keys] == ["k1", "k2"]
    assert "k1" not in repr(s)


@pytest.mark.parametrize("content,needle", [("- 1\n- 2\n", "mapping"), ("a: [\n", "YAML")])
def test_bad_yaml_file(tmp_path: Path, content: str, needle: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=needle):
        Settings.load(cfg)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        Settings.load(tmp_path / "nope.yaml")
