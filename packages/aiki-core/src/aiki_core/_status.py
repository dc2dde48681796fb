"""Run and task statuses and the state machine that governs them.

The allowed transitions are plain data (`RUN_TRANSITIONS`, `TASK_TRANSITIONS`), so the
server, the tests and the docs all read the same table. The server, the one side that
moves a status, refuses anything else with `IllegalTransitionError`.
"""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "RUN_INITIAL_STATUSES",
    "RUN_TERMINAL_STATUSES",
    "RUN_TRANSITIONS",
    "RUN_WAITING_STATUSES",
    "TASK_INITIAL_STATUSES",
    "TASK_RERUN_STATUSES",
    "TASK_TERMINAL_STATUSES",
    "TASK_TRANSITIONS",
    "RunStatus",
    "TaskStatus",
]


class RunStatus(StrEnum):
    """Where a workflow run is in its life."""

    SCHEDULED = "scheduled"
    """Created with a start time in the future."""
    QUEUED = "queued"
    """Ready to be claimed by a worker that serves its version and pool."""
    RUNNING = "running"
    """Claimed by a worker, which is executing it."""
    SLEEPING = "sleeping"
    """Suspended until a durable sleep is due (or woken early)."""
    AWAITING_EVENT = "awaiting_event"
    """Suspended until an event arrives or the wait times out."""
    AWAITING_CHILD = "awaiting_child"
    """Suspended until a child run ends."""
    AWAITING_RETRY = "awaiting_retry"
    """Suspended during a long retry back-off of a task or of the workflow."""
    AWAITING_TASK = "awaiting_task"
    """Suspended while a task endpoint runs a long remote task attempt."""
    PAUSED = "paused"
    """Held by an operator; keeps its state until resumed."""
    CLEANING_UP = "cleaning_up"
    """Cancelled or timed out: a worker runs its cleanup code (hooks, compensations,
    `finally` blocks) before it ends as `cancelled` or `failed`, within a deadline."""
    COMPLETED = "completed"
    """Ended with a result."""
    FAILED = "failed"
    """Ended with an error."""
    CANCELLED = "cancelled"
    """Ended by a cancellation."""

    @property
    def is_terminal(self) -> bool:
        """Whether the run has ended for good."""
        return self in RUN_TERMINAL_STATUSES


class TaskStatus(StrEnum):
    """Where one task call is in its life."""

    RUNNING = "running"
    """An attempt is in flight."""
    COMPLETED = "completed"
    """An attempt returned; its result is recorded."""
    FAILED = "failed"
    """The last allowed attempt failed (or the error was not retryable)."""
    AWAITING_RETRY = "awaiting_retry"
    """An attempt failed; the next one is due after a back-off."""

    @property
    def is_terminal(self) -> bool:
        """Whether the task call has ended for good."""
        return self in TASK_TERMINAL_STATUSES


_R = RunStatus
RUN_TERMINAL_STATUSES: frozenset[RunStatus] = frozenset({_R.COMPLETED, _R.FAILED, _R.CANCELLED})
"""Statuses a run never leaves."""

RUN_WAITING_STATUSES: frozenset[RunStatus] = frozenset(
    {_R.SLEEPING, _R.AWAITING_EVENT, _R.AWAITING_CHILD, _R.AWAITING_RETRY, _R.AWAITING_TASK}
)
"""Statuses of a suspended run: no worker holds it; the server re-queues it when due."""

RUN_INITIAL_STATUSES: frozenset[RunStatus] = frozenset({_R.SCHEDULED, _R.QUEUED})
"""Statuses a run may be created in (`scheduled` for a delayed start)."""

# Every waiting status may be re-queued (the wait ended), paused, cancelled, or failed
# (the run's deadline passed while it waited), or go to its cleanup (cancelled or timed
# out after it ran).
_FROM_WAITING = frozenset({_R.QUEUED, _R.PAUSED, _R.CLEANING_UP, _R.CANCELLED, _R.FAILED})

RUN_TRANSITIONS: Mapping[RunStatus, frozenset[RunStatus]] = MappingProxyType(
    {
        # failed: its deadline (start time plus timeout) passed before it was started
        _R.SCHEDULED: frozenset({_R.QUEUED, _R.PAUSED, _R.CANCELLED, _R.FAILED}),
        # cleaning_up: a run queued again after it ran (woken, released) has code to clean up
        _R.QUEUED: frozenset({_R.RUNNING, _R.PAUSED, _R.CLEANING_UP, _R.CANCELLED, _R.FAILED}),
        _R.RUNNING: frozenset(
            {
                # a worker released the run, or its claim went idle
                _R.QUEUED,
                *RUN_WAITING_STATUSES,
                _R.PAUSED,
                _R.CLEANING_UP,
                *RUN_TERMINAL_STATUSES,
            }
        ),
        _R.SLEEPING: _FROM_WAITING,
        _R.AWAITING_EVENT: _FROM_WAITING,
        _R.AWAITING_CHILD: _FROM_WAITING,
        _R.AWAITING_RETRY: _FROM_WAITING,
        _R.AWAITING_TASK: _FROM_WAITING,
        # resume re-queues the run (replay re-establishes any wait) or, for a run paused
        # before its delayed start, returns it to `scheduled`, and one paused during a
        # retry back-off not yet over to `awaiting_retry`
        _R.PAUSED: frozenset(
            {_R.QUEUED, _R.SCHEDULED, _R.AWAITING_RETRY, _R.CLEANING_UP, _R.CANCELLED, _R.FAILED}
        ),
        # the cleanup ends the run, whether its worker finished it or its deadline passed;
        # a cleanup is claimed and released without a change of status
        _R.CLEANING_UP: frozenset({_R.CANCELLED, _R.FAILED}),
        _R.COMPLETED: frozenset(),
        _R.FAILED: frozenset(),
        _R.CANCELLED: frozenset(),
    }
)
"""For each run status, the statuses it may move to."""

_T = TaskStatus
TASK_TERMINAL_STATUSES: frozenset[TaskStatus] = frozenset({_T.COMPLETED, _T.FAILED})
"""Statuses a task call never leaves."""

TASK_INITIAL_STATUSES: frozenset[TaskStatus] = frozenset(TaskStatus)
"""Statuses a task call may be first recorded in: any.

On the hot path a worker records only the outcome of an attempt (one write per
task); recording `running` first is optional, for visibility of long tasks.
"""

TASK_TRANSITIONS: Mapping[TaskStatus, frozenset[TaskStatus]] = MappingProxyType(
    {
        _T.RUNNING: frozenset({_T.COMPLETED, _T.FAILED, _T.AWAITING_RETRY}),
        # each record is one attempt: after a failed one, the next attempt may be
        # recorded as running, or straight away by its outcome
        _T.AWAITING_RETRY: frozenset({_T.RUNNING, _T.COMPLETED, _T.FAILED, _T.AWAITING_RETRY}),
        _T.COMPLETED: frozenset(),
        _T.FAILED: frozenset(),
    }
)
"""For each task status, the statuses it may move to."""

TASK_RERUN_STATUSES: frozenset[TaskStatus] = frozenset({_T.FAILED})
"""Statuses a task call leaves when a later workflow-level attempt of its run calls it
again: a call that failed for good runs again then (a completed one stays memoized).
From one of them, a later run attempt's record may take any status."""
