import subprocess
import sys

import pytest

from changjak import cli


def test_import_and_help_stay_light() -> None:
    code = ("import sys, changjak, changjak.cli, changjak.settings, changjak.errors\n"
            "heavy = [m for m in ('torch', 'transformers', 'mlflow', 'peft') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "changjak.cli", "--help"], capture_output=True, text=True,
                         check=True)
    for command in ("demo", "data", "train", "eval", "register", "promote", "rollback", "serve"):
        assert command in out.stdout


def test_bad_setting_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                             tmp_path) -> None:
    monkeypatch.setenv("CHANGJAK_HOME", str(tmp_path))
    monkeypatch.setenv("CHANGJAK_TRAIN__BATCH_SIZE", "zero")
    assert cli.main(["train"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "CHANGJAK_TRAIN__BATCH_SIZE" in err


def test_missing_config_file_exit_2(capsys: pytest.CaptureFixture, tmp_path) -> None:
    assert cli.main(["eval", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
