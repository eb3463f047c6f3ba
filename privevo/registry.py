"""Name -> class registries whose entries are ``"module:Class"`` strings, imported on first use.

Configs validate names against a registry's keys without importing torch; the class behind a
name is imported only when a step builds it. ``privevo.image.models.MODEL_BACKENDS`` and
``privevo.image.embeddings.EMBEDDINGS`` are the two registries.
"""

import importlib
from collections.abc import Mapping
from typing import Any

from privevo.errors import UserError


def check_registered(registry: Mapping[str, str], name: str, what: str) -> str:
    """``name`` if it is registered, else a ValueError naming the registered ones (for config validators)."""
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}: use one of {', '.join(sorted(registry))}")
    return name


def registered_class(registry: Mapping[str, str], name: str, what: str) -> Any:
    """Import and return the class registered under ``name``; an unknown name is a one-line UserError."""
    try:
        check_registered(registry, name, what)
    except ValueError as err:
        raise UserError(str(err)) from None
    module, _, attribute = registry[name].partition(":")
    return getattr(importlib.import_module(module), attribute)
