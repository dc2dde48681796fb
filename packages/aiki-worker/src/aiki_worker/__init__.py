"""The Aiki worker: claims runs from the server and executes them."""

from __future__ import annotations

from aiki_worker.__about__ import __version__ as __version__
from aiki_worker._worker import Worker as Worker

__all__ = ("Worker", "__version__")

Worker.__module__ = __name__
