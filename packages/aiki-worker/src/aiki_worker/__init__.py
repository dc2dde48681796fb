"""The Aiki worker: claims runs from the server and executes them, or has them pushed.

`dry_run` replays a run on another version's code without running anything.
"""

from __future__ import annotations

from aiki_worker.__about__ import __version__ as __version__
from aiki_worker._asgi import PushedRunApp as PushedRunApp
from aiki_worker._asgi import asgi_app as asgi_app
from aiki_worker._dry_run import dry_run as dry_run
from aiki_worker._lambda import lambda_handler as lambda_handler
from aiki_worker._worker import Worker as Worker

__all__ = ("PushedRunApp", "Worker", "__version__", "asgi_app", "dry_run", "lambda_handler")

Worker.__module__ = __name__
PushedRunApp.__module__ = __name__
