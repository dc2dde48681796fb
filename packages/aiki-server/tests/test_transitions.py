"""The server's guard on status changes follows the state machine's tables exactly."""

from __future__ import annotations

import itertools

import pytest

from aiki_core import ConflictError, IllegalTransitionError, RunStatus, TaskStatus
from aiki_core.wire import (
    RUN_TRANSITIONS,
    TASK_RERUN_STATUSES,
    TASK_TRANSITIONS,
)
from aiki_server._transitions import check_run_transition, check_task_transition


@pytest.mark.parametrize(("current", "target"), list(itertools.product(RunStatus, repeat=2)))
def test_run_transition_follows_table(current: RunStatus, target: RunStatus) -> None:
    if target in RUN_TRANSITIONS[current]:
        check_run_transition("run-1", current, target)
        return
    with pytest.raises(IllegalTransitionError) as info:
        check_run_transition("run-1", current, target)
    error = info.value
    assert (error.entity, error.entity_id) == ("run", "run-1")
    assert (error.current, error.requested) == (current.value, target.value)
    assert error.details == {
        "entity": "run",
        "entity_id": "run-1",
        "current": current.value,
        "requested": target.value,
    }
    assert isinstance(error, ConflictError)


@pytest.mark.parametrize(("current", "target"), list(itertools.product(TaskStatus, repeat=2)))
def test_task_transition_follows_table(current: TaskStatus, target: TaskStatus) -> None:
    if target in TASK_TRANSITIONS[current]:
        check_task_transition("task-1", current, target)
        return
    with pytest.raises(IllegalTransitionError) as info:
        check_task_transition("task-1", current, target)
    error = info.value
    assert (error.entity, error.entity_id) == ("task", "task-1")
    assert (error.current, error.requested) == (current.value, target.value)


@pytest.mark.parametrize(("current", "target"), list(itertools.product(TaskStatus, repeat=2)))
def test_a_later_run_attempt_reopens_only_a_failed_task(
    current: TaskStatus, target: TaskStatus
) -> None:
    if current in TASK_RERUN_STATUSES or target in TASK_TRANSITIONS[current]:
        check_task_transition("task-1", current, target, later_run_attempt=True)
        return
    with pytest.raises(IllegalTransitionError):  # a completed call stays memoized
        check_task_transition("task-1", current, target, later_run_attempt=True)


def test_illegal_transition_message_names_both_statuses() -> None:
    with pytest.raises(IllegalTransitionError, match="run r cannot move from completed to queued"):
        check_run_transition("r", RunStatus.COMPLETED, RunStatus.QUEUED)
