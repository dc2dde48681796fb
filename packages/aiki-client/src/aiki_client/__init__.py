"""The HTTP client of Aiki: runs, handles, listings, schedules, limits, endpoints, worker calls."""

from __future__ import annotations

from aiki_client.__about__ import __version__ as __version__
from aiki_client._client import Client as Client
from aiki_client._concurrency import ConcurrencyLimits as ConcurrencyLimits
from aiki_client._endpoints import Endpoints as Endpoints
from aiki_client._handle import WorkflowRunHandle as WorkflowRunHandle
from aiki_client._rate_limits import RateLimits as RateLimits
from aiki_client._retention import Retention as Retention
from aiki_client._schedules import Schedules as Schedules

__all__ = (
    "Client",
    "ConcurrencyLimits",
    "Endpoints",
    "RateLimits",
    "Retention",
    "Schedules",
    "WorkflowRunHandle",
    "__version__",
)

for _obj in (
    Client,
    ConcurrencyLimits,
    Endpoints,
    RateLimits,
    Retention,
    Schedules,
    WorkflowRunHandle,
):
    _obj.__module__ = __name__
