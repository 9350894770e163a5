"""The serving side: a FastAPI app that routes requests by task id to hot-swapped task packs.

It imports blockstore, never trainer.
"""

from __future__ import annotations

__all__ = ["ConfigError", "Settings", "create_app", "get_settings"]


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    # Lazy, so that 'nettailor --help' does not import torch and FastAPI.
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in ("Settings", "get_settings", "ConfigError"):
        from . import settings

        return getattr(settings, name)
    raise AttributeError(name)
