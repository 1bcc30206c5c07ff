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


def test_keys_create_list_revoke(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path) -> None:
    import asyncio
    import json

    from changjak.serve.keys import KeyStore
    from changjak.settings import Settings

    monkeypatch.setenv("CHANGJAK_HOME", str(tmp_path))
    assert cli.main(["keys", "create", "--name", "ci", "--role", "developer", "--tenant", "acme", "--rpm", "60",
                     "--scopes", "inference, models:read", "--expires-in", "30", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["key"].startswith(made["prefix"] + "_") and made["scopes"] == ["inference", "models:read"]
    assert (made["role"], made["tenant"], made["rpm"], made["status"]) == ("developer", "acme", 60, "active")
    assert cli.main(["keys", "create", "--name", "root", "--role", "admin", "--tenant", "*"]) == 0
    out = capsys.readouterr()
    assert out.out.strip().startswith("cj_") and "shown only now" in out.err
    assert cli.main(["keys", "list", "--tenant", "acme"]) == 0
    listed = capsys.readouterr().out
    assert made["prefix"] in listed and made["key"] not in listed and "root" not in listed
    assert cli.main(["keys", "revoke", made["prefix"]]) == 0
    assert "revoked" in capsys.readouterr().out
    assert cli.main(["keys", "list", "--json"]) == 0
    statuses = {k["prefix"]: k["status"] for k in json.loads(capsys.readouterr().out)}
    assert statuses[made["prefix"]] == "revoked" and len(statuses) == 2
    store = KeyStore.from_settings(Settings.load())
    try:
        with pytest.raises(Exception, match="revoked"):
            asyncio.run(store.verify(made["key"]))
    finally:
        store.close()


@pytest.mark.parametrize("argv", [
    ["keys", "create", "--name", "x", "--role", "root", "--tenant", "acme"],
    ["keys", "create", "--name", "x", "--role", "user", "--tenant", "two words"],
    ["keys", "create", "--name", "x", "--role", "user", "--tenant", "acme", "--scopes", "keys:manage"],
    ["keys", "create", "--name", "x", "--role", "user", "--tenant", "acme", "--rpm", "0"],
])
def test_bad_key_input_is_one_line_and_exit_2(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture, tmp_path) -> None:
    monkeypatch.setenv("CHANGJAK_HOME", str(tmp_path))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("changjak: Invalid '") and err.count("\n") == 0


def test_revoking_an_unknown_key_says_so(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                         tmp_path) -> None:
    monkeypatch.setenv("CHANGJAK_HOME", str(tmp_path))
    assert cli.main(["keys", "revoke", "cj_00000000"]) == 1
    assert "No API key with that prefix" in capsys.readouterr().err


def test_audit_verify_on_a_fresh_database_is_intact(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                                     tmp_path) -> None:
    monkeypatch.setenv("CHANGJAK_HOME", str(tmp_path))
    assert cli.main(["audit", "verify"]) == 0
    assert "intact: 0 records" in capsys.readouterr().out
    assert cli.main(["feedback", "export", "--out", str(tmp_path / "sft.jsonl")]) == 0
    assert (tmp_path / "sft.jsonl").read_text() == ""
