"""Task definitions (@task) and their execution inside a workflow run."""

from __future__ import annotations

from aiki_task.__about__ import __version__ as __version__

__all__ = ("__version__",)
