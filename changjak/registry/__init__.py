"""The MLflow model registry, with aliases instead of the deprecated stages.

    changjak register [--run-id RUN]     a run's adapter becomes version N, alias ``challenger``
    changjak promote [--version N]       ``champion`` moves to it (gate checked, move recorded)
    changjak rollback --reason "..."     ``champion`` moves back to the one it replaced

Serving addresses a version as ``models:/<name>@champion`` and calls ``resolve`` to fetch it.
The registry is MLflow's, on the store ``settings.registry_uri`` names (SQLite by default,
PostgreSQL in production), reached through ``changjak.tracking``.
"""

from changjak.registry.champion import promote, rollback
from changjak.registry.resolve import ResolvedModel, resolve
from changjak.registry.versions import register

__all__ = ["ResolvedModel", "promote", "register", "resolve", "rollback"]
