"""The worker: claims runs from the server and executes them."""

from __future__ import annotations

from aiki_worker.__about__ import __version__ as __version__

__all__ = ("__version__",)
