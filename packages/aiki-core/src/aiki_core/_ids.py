"""Branded identifiers.

Every id travels as a plain string on the wire; `NewType` keeps a `RunId` from being
passed where a `ScheduleId` is expected, at no runtime cost. Ids are ULIDs. The
server mints most of them; a client mints the id of a run or schedule it creates (a
run's with `new_run_id`), so a payload can be sealed to the run before the server has
seen it.
"""

from __future__ import annotations

from typing import NewType

from ulid import ULID

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_POOL",
    "EventId",
    "Namespace",
    "PoolName",
    "RunId",
    "ScheduleId",
    "TaskAddress",
    "TaskId",
    "WebhookId",
    "WorkerId",
    "new_run_id",
]

RunId = NewType("RunId", str)
"""Identifies one workflow run."""

TaskId = NewType("TaskId", str)
"""Identifies one recorded task call inside a run."""

TaskAddress = NewType("TaskAddress", str)
"""A task call's content address: `<task name>:<hash of its canonical input>`."""

WorkerId = NewType("WorkerId", str)
"""Identifies one worker process."""

ScheduleId = NewType("ScheduleId", str)
"""Identifies one schedule."""

EventId = NewType("EventId", str)
"""Identifies one event delivered to a run."""

WebhookId = NewType("WebhookId", str)
"""Identifies one signed webhook URL that delivers an event to a run."""

Namespace = NewType("Namespace", str)
"""The tenant a run, schedule, event or worker belongs to."""

PoolName = NewType("PoolName", str)
"""A routing label: a run is only handed to workers that serve its pool."""

DEFAULT_NAMESPACE = Namespace("default")
"""The namespace used when no API key scopes a request."""

DEFAULT_POOL = PoolName("default")
"""The pool used when a start names none."""


def new_run_id() -> RunId:
    """A fresh run id (a ULID), for a run the caller is about to start."""
    return RunId(str(ULID()))
