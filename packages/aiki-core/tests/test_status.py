from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, TypeVar

import pytest

from aiki_core import RunStatus, TaskStatus
from aiki_core.wire import (
    RUN_INITIAL_STATUSES,
    RUN_TERMINAL_STATUSES,
    RUN_TRANSITIONS,
    RUN_WAITING_STATUSES,
    TASK_INITIAL_STATUSES,
    TASK_TERMINAL_STATUSES,
    TASK_TRANSITIONS,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

S = TypeVar("S")


def _reachable(starts: Iterable[S], table: Mapping[S, frozenset[S]]) -> set[S]:
    seen = set(starts)
    queue = deque(seen)
    while queue:
        for target in table[queue.popleft()]:
            if target not in seen:
                seen.add(target)
                queue.append(target)
    return seen


def test_tables_have_every_status_as_key() -> None:
    assert set(RUN_TRANSITIONS) == set(RunStatus)
    assert set(TASK_TRANSITIONS) == set(TaskStatus)


def test_no_status_moves_to_itself() -> None:
    assert all(status not in RUN_TRANSITIONS[status] for status in RunStatus)
    # a task's only self-transition: another failed attempt, awaiting the next retry
    self_moves = {status for status in TaskStatus if status in TASK_TRANSITIONS[status]}
    assert self_moves == {TaskStatus.AWAITING_RETRY}


def test_terminal_statuses_have_no_way_out() -> None:
    assert RUN_TERMINAL_STATUSES == {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED}
    assert TASK_TERMINAL_STATUSES == {TaskStatus.COMPLETED, TaskStatus.FAILED}
    for run_status in RUN_TERMINAL_STATUSES:
        assert RUN_TRANSITIONS[run_status] == frozenset()
    for task_status in TASK_TERMINAL_STATUSES:
        assert TASK_TRANSITIONS[task_status] == frozenset()


def test_a_deadline_can_fail_a_run_in_every_status_but_an_end() -> None:
    # the timer daemon fails a run whose deadline passed, whatever it was doing, even a
    # delayed start the daemon reaches late; an ended run keeps its status
    can_fail = {s for s in RunStatus if RunStatus.FAILED in RUN_TRANSITIONS[s]}
    assert can_fail == set(RunStatus) - RUN_TERMINAL_STATUSES


def test_only_terminal_statuses_are_dead_ends() -> None:
    assert {s for s in RunStatus if not RUN_TRANSITIONS[s]} == RUN_TERMINAL_STATUSES
    assert {s for s in TaskStatus if not TASK_TRANSITIONS[s]} == TASK_TERMINAL_STATUSES


def test_every_run_status_is_reachable_from_an_initial_one() -> None:
    assert RUN_INITIAL_STATUSES == {RunStatus.SCHEDULED, RunStatus.QUEUED}
    assert _reachable(RUN_INITIAL_STATUSES, RUN_TRANSITIONS) == set(RunStatus)


def test_every_task_status_is_reachable_from_an_initial_one() -> None:
    assert TASK_INITIAL_STATUSES == set(TaskStatus)
    assert _reachable(TASK_INITIAL_STATUSES, TASK_TRANSITIONS) == set(TaskStatus)


def test_every_run_status_can_end() -> None:
    for status in RunStatus:
        assert _reachable([status], RUN_TRANSITIONS) & RUN_TERMINAL_STATUSES


def test_waiting_statuses_are_entered_from_running_and_left_to_the_queue() -> None:
    for status in RUN_WAITING_STATUSES:
        assert status in RUN_TRANSITIONS[RunStatus.RUNNING]
        assert RunStatus.QUEUED in RUN_TRANSITIONS[status]
        assert RunStatus.RUNNING not in RUN_TRANSITIONS[status]


def test_tables_are_read_only() -> None:
    with pytest.raises(TypeError):
        RUN_TRANSITIONS[RunStatus.COMPLETED] = frozenset({RunStatus.QUEUED})  # type: ignore[index]
    with pytest.raises(TypeError):
        TASK_TRANSITIONS[TaskStatus.FAILED] = frozenset({TaskStatus.RUNNING})  # type: ignore[index]


@pytest.mark.parametrize("status", list(RunStatus))
def test_run_status_is_terminal(status: RunStatus) -> None:
    expected = status in {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED}
    assert status.is_terminal is expected


@pytest.mark.parametrize("status", list(TaskStatus))
def test_task_status_is_terminal(status: TaskStatus) -> None:
    expected = status in {TaskStatus.COMPLETED, TaskStatus.FAILED}
    assert status.is_terminal is expected


def test_statuses_are_their_wire_strings() -> None:
    assert RunStatus("awaiting_event") is RunStatus.AWAITING_EVENT
    assert f"{RunStatus.RUNNING}" == "running"
    assert TaskStatus("awaiting_retry") is TaskStatus.AWAITING_RETRY
