"""changjak promote [--version N] [--force] --reason "..."   |   changjak rollback --reason "..."

Moves the ``champion`` alias (what serving loads) and records every move: who, why, when and
from which version.

- ``promote`` takes the ``challenger`` by default and refuses a version whose evaluation gate
  did not pass, or whose bias gate (``changjak eval --suite bias``) failed, unless forced (the
  override is recorded too).
- ``rollback`` moves the champion back to the one it replaced.

Records live in the registry itself, beside the aliases they explain: on the registered model,
tag ``changjak.champion.history`` (a JSON list of events, the newest that fit in a tag) and tag
``changjak.champion.lineage`` (the stack of champions rollback pops); on each version that
becomes champion, tags ``promoted_*`` or ``rolled_back_*``.
"""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from changjak import tracking
from changjak.errors import RegistryError
from changjak.registry.versions import CHALLENGER, CHAMPION, model_version, registered_model

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import RegisteredModel

    from changjak.settings import Settings

HISTORY_TAG = "changjak.champion.history"
LINEAGE_TAG = "changjak.champion.lineage"
TAG_LIMIT = 5000  # registered-model tag values are VARCHAR(5000) in MLflow's SQL schema
LINEAGE_DEPTH = 100  # how many champions back rollback can go


def promote(settings: Settings, version: str | int | None = None, *, actor: str | None = None,
            reason: str | None = None, force: bool = False) -> str:
    """Make ``version`` (default: the challenger) the champion; return it."""
    client = tracking.client(settings)
    name = settings.model_name
    model = registered_model(client, name)
    if version is None:
        version = model.aliases.get(CHALLENGER)
        if version is None:
            raise RegistryError(f"{name} has no {CHALLENGER} to promote",
                                hint="run `changjak register`, or pass --version N")
    found = model_version(client, name, version)
    version, gate = str(found.version), found.tags.get("gate_passed", "not evaluated")
    if gate != "true" and not force:
        raise RegistryError(f"{name} v{version} did not pass the evaluation gate (gate_passed: {gate})",
                            hint=f"promote a version that passed, or override with "
                                 f"`changjak promote --version {version} --force --reason \"...\"`")
    if found.tags.get("bias_passed") == "false" and not force:  # not probed yet does not block
        raise RegistryError(f"{name} v{version} failed the bias gate (bias_passed: false)",
                            hint=f"promote a version that passed, or override with "
                                 f"`changjak promote --version {version} --force --reason \"...\"`")
    previous = _alias(model, CHAMPION)
    if previous == version:
        raise RegistryError(f"{name} v{version} is already the {CHAMPION}",
                            hint="register and promote another version, or `changjak rollback`")
    lineage = _lineage(model)
    if previous is not None and lineage[-1:] != [previous]:  # the alias was moved outside changjak
        lineage.append(previous)
    lineage = [*lineage, version][-LINEAGE_DEPTH:]
    event = _event("promoted", version, previous, actor, reason, forced=force)
    _move_champion(client, model, event, lineage)
    print(f"promoted {name} v{version} to {CHAMPION} (was {_v(previous)})" + (" [forced]" if force else ""))
    return version


def rollback(settings: Settings, actor: str, reason: str) -> str:
    """Move the champion back to the one it replaced; return that version."""
    client = tracking.client(settings)
    name = settings.model_name
    model = registered_model(client, name)
    current, lineage = _alias(model, CHAMPION), _lineage(model)
    if current is None:
        raise RegistryError(f"{name} has no {CHAMPION} to roll back", hint="run `changjak promote` first")
    if not lineage or lineage[-1] != current:
        raise RegistryError(f"{name}'s {CHAMPION} (v{current}) was moved outside changjak, so its "
                            "predecessor is unknown",
                            hint="choose one explicitly: `changjak promote --version N --reason ...`")
    if len(lineage) < 2:
        raise RegistryError(f"nothing to roll back to: v{current} is the first recorded {CHAMPION} of {name}",
                            hint="promote another version with `changjak promote --version N`")
    target = str(model_version(client, name, lineage[-2]).version)
    _move_champion(client, model, _event("rolled_back", target, current, actor, reason), lineage[:-1])
    print(f"rolled {name} {CHAMPION} back from v{current} to v{target}: {reason}")
    return target


def history(model: RegisteredModel) -> list[dict[str, Any]]:
    """The recorded champion moves, oldest first."""
    return json.loads(model.tags.get(HISTORY_TAG, "[]"))


def _event(action: str, version: str, previous: str | None, actor: str | None, reason: str | None,
           **extra: Any) -> dict[str, Any]:
    return {"action": action, "version": version, "from": previous, "by": actor or getpass.getuser(),
            "reason": (reason or "")[:500], "at": datetime.now(UTC).isoformat(timespec="seconds"), **extra}


def _move_champion(client: MlflowClient, model: RegisteredModel, event: dict[str, Any],
                   lineage: list[str]) -> None:
    """Point the alias first (the truth), then record the move on the model and on the version."""
    client.set_registered_model_alias(model.name, CHAMPION, event["version"])
    events = [*history(model), event]
    while len(json.dumps(events, ensure_ascii=False)) > TAG_LIMIT:
        events.pop(0)  # the oldest go first; each version keeps its own record in its tags
    client.set_registered_model_tag(model.name, HISTORY_TAG, json.dumps(events, ensure_ascii=False))
    client.set_registered_model_tag(model.name, LINEAGE_TAG, json.dumps(lineage))
    for key, value in event.items():
        if key not in ("action", "version"):
            text = str(value).lower() if isinstance(value, bool) else value or ""
            client.set_model_version_tag(model.name, event["version"], f"{event['action']}_{key}", text)


def _alias(model: RegisteredModel, alias: str) -> str | None:
    version = model.aliases.get(alias)
    return None if version is None else str(version)


def _lineage(model: RegisteredModel) -> list[str]:
    return json.loads(model.tags.get(LINEAGE_TAG, "[]"))


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"
