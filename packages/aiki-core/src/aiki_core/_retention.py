"""Retention: how long a namespace keeps its ended runs (`/api/v1/retention`).

An ended run (completed, failed or cancelled) is deleted with everything it holds
(tasks, history, events, waits, webhooks) once its retention has passed since it
ended. The server's setting applies to every namespace that has none of its own.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, Field

from aiki_core._duration import Duration
from aiki_core._wire import RequestModel, ResponseModel

__all__ = ["RetentionInfo", "SetRetentionRequest"]


class SetRetentionRequest(RequestModel):
    """The namespace's own retention (`PUT /api/v1/retention`)."""

    retention: Duration | None = Field(
        description="How long an ended run is kept, from its end (milliseconds); `null`: forever."
    )


class RetentionInfo(ResponseModel):
    """The retention in effect for the caller's namespace."""

    namespace: str
    retention: Duration | None = Field(
        description="How long an ended run is kept, from its end (milliseconds); `null`: forever."
    )
    source: Literal["server", "namespace"] = Field(
        description="`server`: the server's setting; `namespace`: set for the namespace,"
        " in effect until cleared."
    )
    updated_at: AwareDatetime | None = Field(
        default=None, description="When the namespace's own retention was set."
    )
