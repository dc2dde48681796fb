"""Database rows to wire models, the JSON columns in between, and new rows' ids."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ulid import ULID

from aiki_core import ErrorInfo
from aiki_core.wire import (
    ChildRecord,
    EventRecord,
    EventWaitRecord,
    PendingWait,
    RunDetail,
    RunNotice,
    RunOutcome,
    RunSummary,
    SleepRecord,
    StateTransition,
    TaskAttemptRecord,
    TaskRecord,
)
from aiki_server._clock import from_ms

if TYPE_CHECKING:
    from pydantic import JsonValue

    from aiki_server._storage._database import Row

RUN_COLUMNS = (
    "id, namespace, workflow, version, pool, status, revision, attempt, reference_id,"
    " parent_run_id, schedule_id, created_at, updated_at, start_at, deadline_at, finished_at,"
    " pause_requested, continued_as, continued_from, priority, concurrency_key"
)


def new_id() -> str:
    """A new row id: a ULID, in the order of creation."""
    return str(ULID())


def placeholders(first: int, count: int) -> str:
    """The parameters of one row's columns (never one per row of a list: see `Tx.in_array`)."""
    return ", ".join(f"${i}" for i in range(first, first + count))


def dump(value: JsonValue) -> str:
    """A payload as stored: compact JSON text."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def load(text: str | None) -> JsonValue:
    """A stored payload back as JSON values."""
    loaded: JsonValue = None if text is None else json.loads(text)
    return loaded


def load_error(text: str | None) -> ErrorInfo | None:
    """A stored `ErrorInfo`."""
    return None if text is None else ErrorInfo.model_validate_json(text)


def _summary_fields(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "namespace": row["namespace"],
        "workflow": row["workflow"],
        "version": row["version"],
        "status": row["status"],
        "pool": row["pool"],
        "revision": row["revision"],
        "attempt": row["attempt"],
        "reference_id": row["reference_id"],
        "parent_run_id": row["parent_run_id"],
        "schedule_id": row["schedule_id"],
        "created_at": from_ms(row["created_at"]),
        "updated_at": from_ms(row["updated_at"]),
        "start_at": from_ms(row["start_at"]),
        "deadline_at": from_ms(row["deadline_at"]),
        "finished_at": from_ms(row["finished_at"]),
        "pause_requested": bool(row["pause_requested"]),
        "continued_as": row["continued_as"],
        "continued_from": row["continued_from"],
        "priority": row["priority"],
        "concurrency_key": row["concurrency_key"],
    }


def run_summary(row: Row) -> RunSummary:
    """A `runs` row (at least `RUN_COLUMNS`) as a `RunSummary`."""
    return RunSummary(**_summary_fields(row))


def run_outcome(row: Row) -> RunOutcome:
    """A `runs` row (`RUN_COLUMNS`, `result`, `error`) as a `RunOutcome`."""
    return RunOutcome(
        **_summary_fields(row), result=load(row["result"]), error=load_error(row["error"])
    )


def task_record(row: Row, attempts: list[Row]) -> TaskRecord:
    """A `tasks` row and its `task_attempts` rows."""
    return TaskRecord(
        id=row["id"],
        name=row["name"],
        address=row["address"],
        occurrence=row["occurrence"],
        status=row["status"],
        input=load(row["input"]),
        result=load(row["result"]),
        error=load_error(row["error"]),
        attempts=[
            TaskAttemptRecord(
                attempt=a["attempt"],
                status=a["status"],
                run_attempt=a["run_attempt"],
                started_at=from_ms(a["started_at"]),
                finished_at=from_ms(a["finished_at"]),
                error=load_error(a["error"]),
            )
            for a in attempts
        ],
        next_attempt_at=from_ms(row["next_attempt_at"]),
        created_at=from_ms(row["created_at"]),
        finished_at=from_ms(row["finished_at"]),
        run_attempt=row["run_attempt"],
        notice=row["notice"],
    )


def sleep_record(row: Row) -> SleepRecord:
    """A `sleeps` row."""
    return SleepRecord(
        name=row["name"],
        occurrence=row["occurrence"],
        status=row["status"],
        wake_at=from_ms(row["wake_at"]),
        completed_at=from_ms(row["completed_at"]),
    )


def event_wait_record(row: Row) -> EventWaitRecord:
    """An `event_waits` row."""
    return EventWaitRecord(
        name=row["name"],
        occurrence=row["occurrence"],
        status=row["status"],
        timeout_at=from_ms(row["timeout_at"]),
        event_id=row["event_id"],
    )


def event_record(row: Row) -> EventRecord:
    """An `events` row."""
    return EventRecord(
        id=row["id"],
        name=row["name"],
        reference_id=row["reference_id"],
        data=load(row["data"]),
        origin=row["origin"],
        received_at=from_ms(row["received_at"]),
        consumed=bool(row["consumed"]),
    )


def child_record(row: Row) -> ChildRecord:
    """A child's `runs` row (with `child_address` and `child_occurrence`)."""
    return ChildRecord(
        run_id=row["id"],
        workflow=row["workflow"],
        version=row["version"],
        address=row["child_address"],
        occurrence=row["child_occurrence"],
        status=row["status"],
        result=load(row["result"]),
        error=load_error(row["error"]),
    )


def transition(row: Row, seq: int) -> StateTransition:
    """A `state_transitions` row, the `seq`-th of its run's history.

    The table's own sequence is server-wide: shown, it would tell a namespace how
    much every other one did between two of its transitions.
    """
    return StateTransition(
        seq=seq,
        run_id=row["run_id"],
        entity=row["entity"],
        entity_id=row["entity_id"],
        from_status=row["from_status"],
        to_status=row["to_status"],
        reason=row["reason"],
        revision=row["revision"],
        at=from_ms(row["at"]),
    )


def pending_waits(text: str | None) -> list[PendingWait]:
    """The `waits` column: what a suspended run waits for, due times in epoch ms."""
    waits: list[dict[str, Any]] = json.loads(text) if text else []
    return [PendingWait(**{**w, "due_at": from_ms(w.get("due_at"))}) for w in waits]


def run_detail(row: Row, *, tasks: list[TaskRecord], **parts: Any) -> RunDetail:
    """A full `runs` row plus its recorded parts as a `RunDetail`.

    The run's notices are those its task calls carry, oldest first.
    """
    return RunDetail(
        **_summary_fields(row),
        input=load(row["input"]),
        result=load(row["result"]),
        error=load_error(row["error"]),
        timer_failures=row["timer_failures"],
        parent_close_policy=row["parent_close_policy"],
        timer_error=load_error(row["timer_error"]),
        waits=pending_waits(row["waits"]),
        tasks=tasks,
        notices=[
            RunNotice(task_id=t.id, at=t.created_at, message=t.notice)
            for t in tasks
            if t.notice is not None
        ],
        **parts,
    )


def encode_cursor(created_at: int, row_id: str) -> str:
    """A keyset cursor (`aiki_core.Cursor`): the sort key of the last row of a page."""
    return f"{created_at}-{row_id}"


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The (created_at, id) of a cursor; its pattern, checked by the request model, holds both."""
    created_at, row_id = cursor.split("-", 1)
    return int(created_at), row_id
