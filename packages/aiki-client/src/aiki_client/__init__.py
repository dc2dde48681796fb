"""The HTTP client of Aiki: start runs, run handles, listing, schedules, and the worker's calls."""

from __future__ import annotations

from aiki_client.__about__ import __version__ as __version__
from aiki_client._client import Client as Client
from aiki_client._handle import WorkflowRunHandle as WorkflowRunHandle
from aiki_client._rate_limits import RateLimits as RateLimits
from aiki_client._schedules import Schedules as Schedules

__all__ = ("Client", "RateLimits", "Schedules", "WorkflowRunHandle", "__version__")

for _obj in (Client, RateLimits, Schedules, WorkflowRunHandle):
    _obj.__module__ = __name__
