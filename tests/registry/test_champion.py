"""`changjak promote` / `changjak rollback`: the gate guards the champion unless forced, and every
move is recorded (who, why, when, from which version) on the model and on the version."""

from __future__ import annotations

import json

import pytest

from changjak import registry, tracking
from changjak.errors import RegistryError
from changjak.registry.champion import HISTORY_TAG, LINEAGE_TAG, TAG_LIMIT
from changjak.settings import Settings
from tests.registry.conftest import Store


def _model(settings: Settings):
    return tracking.client(settings).get_registered_model(settings.model_name)


def _champion(settings: Settings) -> str:
    return str(_model(settings).aliases["champion"])


def _history(settings: Settings) -> list[dict]:
    return json.loads(_model(settings).tags[HISTORY_TAG])


def test_promote_refuses_a_failed_gate_unless_forced(store: Store, settings: Settings) -> None:
    registry.register(settings, run_id=store.failed.run_id)

    with pytest.raises(RegistryError, match="did not pass the evaluation gate") as e:
        registry.promote(settings, actor="kim")
    assert "--force" in e.value.hint
    assert "champion" not in _model(settings).aliases

    assert registry.promote(settings, actor="kim", reason="hotfix for a demo", force=True) == "1"
    assert _champion(settings) == "1"
    (event,) = _history(settings)
    assert event["action"] == "promoted" and event["forced"] is True and event["by"] == "kim"
    tags = tracking.client(settings).get_model_version(settings.model_name, "1").tags
    assert tags["promoted_forced"] == "true" and tags["promoted_reason"] == "hotfix for a demo"


def test_promote_then_rollback_records_who_why_when(store: Store, settings: Settings) -> None:
    client = tracking.client(settings)
    registry.register(settings, run_id=store.passed.run_id)
    assert registry.promote(settings, actor="lee", reason="first champion") == "1"
    second = registry.register(settings, run_id=store.failed.run_id)
    assert registry.promote(settings, version=second, actor="park", reason="try it", force=True) == "2"
    assert _champion(settings) == "2"
    with pytest.raises(RegistryError, match="already the champion"):
        registry.promote(settings, version=2, actor="park", force=True)

    assert registry.rollback(settings, actor="choi", reason="users complain") == "1"

    assert _champion(settings) == "1"
    events = _history(settings)
    assert [(e["action"], e["version"], e["from"], e["by"]) for e in events] == [
        ("promoted", "1", None, "lee"), ("promoted", "2", "1", "park"), ("rolled_back", "1", "2", "choi")]
    assert events[-1]["reason"] == "users complain" and events[-1]["at"] >= events[0]["at"]
    v1 = client.get_model_version(settings.model_name, "1").tags
    assert (v1["promoted_by"], v1["rolled_back_by"], v1["rolled_back_from"]) == ("lee", "choi", "2")
    assert v1["rolled_back_reason"] == "users complain" and v1["rolled_back_at"] == events[-1]["at"]
    assert client.get_model_version(settings.model_name, "2").tags["promoted_from"] == "1"
    assert json.loads(_model(settings).tags[LINEAGE_TAG]) == ["1"]

    with pytest.raises(RegistryError, match="nothing to roll back to") as e:
        registry.rollback(settings, actor="choi", reason="again")
    assert "changjak promote" in e.value.hint


def test_a_champion_moved_outside_changjak_is_respected(store: Store, settings: Settings) -> None:
    client = tracking.client(settings)
    for run in (store.passed, store.passed, store.passed):
        registry.register(settings, run_id=run.run_id)
    registry.promote(settings, version=1, actor="lee")
    client.set_registered_model_alias(settings.model_name, "champion", "2")  # e.g. in the MLflow UI

    with pytest.raises(RegistryError, match="moved outside changjak"):
        registry.rollback(settings, actor="lee", reason="?")
    registry.promote(settings, version=3, actor="lee")
    assert registry.rollback(settings, actor="lee", reason="back to what the UI set") == "2"


def test_history_keeps_the_newest_moves_that_fit_in_a_tag(store: Store, settings: Settings) -> None:
    registry.register(settings, run_id=store.passed.run_id)
    registry.register(settings, run_id=store.passed.run_id)
    reason = "긴 이유 " * 60
    for i in range(12):
        registry.promote(settings, version=1 + i % 2, actor=f"user{i}", reason=reason)

    events = _history(settings)
    assert len(json.dumps(events, ensure_ascii=False)) <= TAG_LIMIT
    assert 1 < len(events) < 12 and events[-1]["by"] == "user11"
    assert _champion(settings) == "2"


def test_nothing_to_promote_or_roll_back(store: Store, settings: Settings) -> None:
    with pytest.raises(RegistryError, match="no registered model") as e:
        registry.promote(settings, actor="lee")
    assert "changjak register" in e.value.hint
    tracking.client(settings).create_registered_model(settings.model_name)
    with pytest.raises(RegistryError, match="no challenger"):
        registry.promote(settings, actor="lee")
    with pytest.raises(RegistryError, match="has no version 7"):
        registry.promote(settings, version=7, actor="lee")
    with pytest.raises(RegistryError, match="no champion to roll back"):
        registry.rollback(settings, actor="lee", reason="none")
