"""From a model URI to files on disk: what serving calls at start-up.

``models:/<name>@<alias>`` (``champion``, ``challenger``) or ``models:/<name>/<version>``
becomes the version's adapter, downloaded once into ``<home>/registry/<name>/`` (a version's
artifacts never change, so a cached copy is reused), plus the base model it needs (source and
sha256 from the version's tags) for ``changjak.base_model.resolve`` to fetch and verify.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from changjak import tracking
from changjak.errors import RegistryError
from changjak.registry.versions import CHALLENGER, CHAMPION, model_version, registered_model

if TYPE_CHECKING:
    from changjak.settings import Settings

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")
_ALIAS_HINTS = {CHAMPION: "run `changjak promote` to choose a champion",
                CHALLENGER: "run `changjak register` to add a challenger"}


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    version: str
    alias: str | None  # the alias it was addressed by, if any
    run_id: str | None
    adapter_dir: Path
    base_source: str
    base_sha256: str


def resolve(settings: Settings, uri: str) -> ResolvedModel:
    """The registered version ``uri`` names, with its adapter in the local cache."""
    match = _URI.match(uri)
    if match is None:
        raise RegistryError(f"{uri!r} is not a model URI",
                            hint="use models:/<name>@<alias> or models:/<name>/<version>")
    name, alias, version = match["name"], match["alias"], match["version"]
    client = tracking.client(settings)
    if alias is not None:
        version = registered_model(client, name).aliases.get(alias)
        if version is None:
            hint = _ALIAS_HINTS.get(alias, f"set it in the MLflow UI, or use models:/{name}@{CHAMPION}")
            raise RegistryError(f"{name} has no alias {alias!r}", hint=hint)
    found = model_version(client, name, version)
    base_source, base_sha256 = found.tags.get("base_model_source"), found.tags.get("base_model_sha256")
    if not base_source or not base_sha256:
        raise RegistryError(f"{name} v{found.version} does not say which base model it needs",
                            hint="register adapters with `changjak register`, which tags their base")

    download_uri = client.get_model_version_download_uri(name, found.version)
    key = hashlib.sha256(download_uri.encode()).hexdigest()[:12]  # a new registry reusing numbers misses
    adapter_dir = settings.home / "registry" / name / f"v{found.version}-{key}"
    if not (adapter_dir / "adapter_config.json").is_file():
        _download(download_uri, adapter_dir)
    return ResolvedModel(name=name, version=str(found.version), alias=alias, run_id=found.run_id,
                         adapter_dir=adapter_dir, base_source=base_source, base_sha256=base_sha256)


def _download(artifact_uri: str, dest: Path) -> None:
    """Fetch into a temporary sibling, then rename: an interrupted download leaves no half copy."""
    import mlflow.artifacts

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        fetched = Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(tmp)))
        if not (fetched / "adapter_config.json").is_file():
            raise RegistryError(f"{artifact_uri} holds no LoRA adapter (adapter_config.json is missing)",
                                hint="register a run whose adapter/ artifact came from `changjak train`")
        try:
            os.replace(fetched, dest)
        except OSError:
            if not (dest / "adapter_config.json").is_file():  # else another process finished first: keep it
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
