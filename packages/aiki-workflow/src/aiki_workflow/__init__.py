"""Workflow definitions, versions, the run context and content-addressed replay."""

from __future__ import annotations

from aiki_workflow.__about__ import __version__ as __version__

__all__ = ("__version__",)
