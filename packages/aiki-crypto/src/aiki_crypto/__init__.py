"""Payload encryption codec (AES-256-GCM with a rotating key ring)."""

from __future__ import annotations

from aiki_crypto.__about__ import __version__ as __version__

__all__ = ("__version__",)
