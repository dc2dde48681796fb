"""The server's guard on every status change: the state machine of `aiki_core.wire`.

The transitions are data in `aiki_core.wire` (`RUN_TRANSITIONS`, `TASK_TRANSITIONS`),
which every side may read; the server, the one side that moves a status, refuses any
other move with `IllegalTransitionError` (a 409).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiki_core import IllegalTransitionError
from aiki_core.wire import RUN_TRANSITIONS, TASK_RERUN_STATUSES, TASK_TRANSITIONS

if TYPE_CHECKING:
    from aiki_core import RunStatus, TaskStatus


def check_run_transition(run_id: str, current: RunStatus, target: RunStatus) -> None:
    """Raise `IllegalTransitionError` unless a run may move from `current` to `target`."""
    if target not in RUN_TRANSITIONS[current]:
        raise IllegalTransitionError("run", run_id, current, target)


def check_task_transition(
    task_id: str, current: TaskStatus, target: TaskStatus, *, later_run_attempt: bool = False
) -> None:
    """Raise `IllegalTransitionError` unless a task may move from `current` to `target`.

    `later_run_attempt`: the record comes from a later workflow-level attempt of the run
    than the one that wrote `current` (see `TASK_RERUN_STATUSES`).
    """
    if later_run_attempt and current in TASK_RERUN_STATUSES:
        return
    if target not in TASK_TRANSITIONS[current]:
        raise IllegalTransitionError("task", task_id, current, target)
