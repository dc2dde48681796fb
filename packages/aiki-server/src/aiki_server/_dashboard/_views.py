"""What the dashboard's templates show, computed from the API's own models.

Plain functions of a `RunDetail` or a value: how long something took, whether a
payload is sealed, what a run waits for in words, and where each task attempt's bar
sits on the run's timeline.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiki_core import RunStatus

if TYPE_CHECKING:
    from pydantic import JsonValue

    from aiki_core import ErrorInfo
    from aiki_core.wire import RunDetail

_ENVELOPE = re.compile(r"^aiki:v[0-9]{1,4}:[^:]+:[A-Za-z0-9_-]+$")
"""A payload sealed by a codec (aiki-crypto's envelope): the server cannot read it."""
_MIN_BAR = 0.8
"""Percent of the timeline's width a bar takes at least, so an instant one shows."""


def is_sealed(value: JsonValue) -> bool:
    """Whether a payload is an encrypted envelope rather than readable JSON."""
    return isinstance(value, str) and _ENVELOPE.match(value) is not None


def pretty_json(value: JsonValue) -> str:
    """The payload indented for reading."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def duration(ms: float | None) -> str:
    """A duration in the largest units that matter: `850 ms`, `4.2 s`, `3 min 5 s`, `2 d 4 h`."""
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def timestamp(at: datetime | None) -> str:
    """A time in UTC, to the second."""
    return "—" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def between(start: datetime, end: datetime | None, now: datetime) -> str:
    """How long from `start` to `end` (to `now` while it goes on)."""
    return duration(((end or now) - start).total_seconds() * 1000)


def error_line(error: ErrorInfo | None) -> str:
    """`Type: message` of an error, its type without the module."""
    if error is None:
        return ""
    return f"{error.type.rpartition('.')[2]}: {error.message}"


def waiting_for(run: RunDetail) -> list[str]:
    """What the run waits for, in words (empty when it waits for nothing)."""
    lines: list[str] = []
    if run.pause_requested:
        lines.append("pause requested: it stops at its next task boundary")
    for wait in run.waits:
        due = f" until {timestamp(wait.due_at)} UTC" if wait.due_at is not None else ""
        if wait.kind == "sleep":
            lines.append(f"sleeping{due}" + (f" ({wait.name})" if wait.name else ""))
        elif wait.kind == "event":
            timeout = f" (times out at {timestamp(wait.due_at)} UTC)" if wait.due_at else ""
            lines.append(f"waiting for event {wait.name!r}{timeout}")
        elif wait.kind == "child":
            lines.append(f"waiting for child run {wait.child_run_id}")
        elif wait.kind == "task":
            continue  # the pending reason names the task and its endpoint
        else:
            names = [t.name for t in run.tasks if wait.address and t.address == wait.address]
            what = f"task {names[0]}" if names else "the run"
            lines.append(f"retrying {what}{due}")
    if run.pending_reason:
        lines.append(run.pending_reason)
    if run.status == RunStatus.SCHEDULED and run.start_at is not None:
        lines.append(f"starts at {timestamp(run.start_at)} UTC")
    return lines


@dataclass(frozen=True, slots=True)
class Bar:
    """One task attempt on the timeline, placed in percent of its width."""

    left: float
    width: float
    status: str
    label: str


@dataclass(frozen=True, slots=True)
class Lane:
    """A task call's row on the timeline: its name and a bar per attempt."""

    name: str
    attempts: int
    failed: bool
    bars: list[Bar]


@dataclass(frozen=True, slots=True)
class Timeline:
    """The run's task attempts over time, from its creation to its end (or now)."""

    lanes: list[Lane]
    ticks: list[tuple[float, str]]
    """Axis marks: percent of the width, time since the run was created."""


def timeline(run: RunDetail, now: datetime) -> Timeline:
    """Every attempt of every task call of the run, placed between its start and its end."""
    start = run.created_at
    ends = [run.finished_at or now]
    for task in run.tasks:
        ends += [a.finished_at or now for a in task.attempts]
    span_ms = max((max(ends) - start).total_seconds() * 1000, 1.0)

    def place(at: datetime) -> float:
        return min(max((at - start).total_seconds() * 1000 / span_ms * 100, 0.0), 100.0)

    lanes = []
    for task in run.tasks:
        bars = []
        for attempt in task.attempts:
            left = place(attempt.started_at)
            right = place(attempt.finished_at or now)
            took = between(attempt.started_at, attempt.finished_at, now)
            label = f"attempt {attempt.attempt}: {attempt.status} after {took}"
            if attempt.error is not None:
                label += f" — {error_line(attempt.error)}"
            width = max(right - left, _MIN_BAR)
            # an attempt that raised is a failure on the chart, retried or not
            status = "failed" if attempt.error is not None else str(attempt.status)
            bars.append(Bar(min(left, 100 - width), width, status, label))
        name = task.name if task.occurrence == 0 else f"{task.name} #{task.occurrence + 1}"
        lanes.append(Lane(name, len(task.attempts), task.status == "failed", bars))
    ticks = [(pct, duration(span_ms * pct / 100)) for pct in (0.0, 25.0, 50.0, 75.0, 100.0)]
    return Timeline(lanes, ticks)
