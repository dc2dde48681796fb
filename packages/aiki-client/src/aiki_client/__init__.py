"""The HTTP client: start runs, run handles, events, schedules, listing."""

from __future__ import annotations

from aiki_client.__about__ import __version__ as __version__

__all__ = ("__version__",)
