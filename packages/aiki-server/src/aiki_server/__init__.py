"""The orchestrator: HTTP API, storage on SQLite or PostgreSQL, timers and claims."""

from __future__ import annotations

from aiki_server.__about__ import __version__ as __version__

__all__ = ("__version__",)
