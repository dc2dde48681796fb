"""What the commands print for people: rich tables, trees and panels.

Scripts use `--json` instead, which prints the API's own models. A sealed payload
(encrypted by the client's codec; the CLI holds no key) is shown as sealed, never
as its ciphertext.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table
from rich.text import Text

from aiki_core import RunStatus

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime, timedelta

    from rich.console import RenderableType
    from rich.tree import Tree

    from aiki_core import ErrorInfo
    from aiki_core.wire import (
        ChildRecord,
        ConcurrencyLimit,
        DryRunReport,
        EndpointInfo,
        RateLimitInfo,
        RecordedCall,
        RetentionInfo,
        RunDetail,
        RunSummary,
        Schedule,
        TaskRecord,
        WorkerSummary,
    )

_SEALED = re.compile(r"aiki:v\d+:([^:]+):")
"""The start of an envelope of aiki-crypto's codec: its version and key id."""

_STYLES = {
    "completed": "green",
    "failed": "red",
    "timed_out": "red",
    "cancelled": "yellow",
    "paused": "yellow",
    "cleaning_up": "yellow",
    "running": "cyan",
    "healthy": "green",
    "failing": "yellow",
    "open": "red",
}
"""Colours of run, task and endpoint statuses; the others (waiting, queued, ...) are blue."""
_INLINE = 60
"""Characters of a payload shown in a table cell."""


def status(value: str) -> Text:
    """A run's or task's status, coloured by how it stands."""
    return Text(value, style=_STYLES.get(value, "blue"))


def when(moment: datetime | None) -> str:
    """A timestamp, to the second, in UTC."""
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def duration(start: datetime | None, end: datetime | None) -> str:
    """How long from `start` to `end`: `0.25s`, `3m 02s`, `2h 05m`."""
    if start is None or end is None:
        return ""
    seconds = (end - start).total_seconds()
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


def sealed_key(value: object) -> str | None:
    """The key id that sealed `value`, or `None` when it is not sealed."""
    match = _SEALED.match(value) if isinstance(value, str) else None
    return None if match is None else match.group(1)


def payload(value: object, *, inline: bool = False) -> Text:
    """A payload as JSON, or `sealed (key k)` when the client's codec encrypted it."""
    key = sealed_key(value)
    if key is not None:
        return Text(f"sealed (key {key})", style="magenta")
    shown = json.dumps(value, ensure_ascii=False, indent=None if inline else 2)
    if inline and len(shown) > _INLINE:
        shown = shown[: _INLINE - 1] + "…"
    return Text(shown)


def error(info: ErrorInfo | None) -> Text:
    """An error as `Type: message`, with its causes; its sealed details shown as sealed."""
    if info is None:
        return Text("")
    text = Text(f"{info.type}: {info.message}", style="red")
    if info.sealed is not None:
        text.append("  (details sealed)", style="magenta")
    cause = info.cause
    while cause is not None:
        text.append(f"\n  caused by {cause.type}: {cause.message}", style="red")
        cause = cause.cause
    return text


def runs_table(runs: Iterable[RunSummary]) -> Table:
    """One row per run: id, workflow, version, status, reference id, created."""
    table = Table(box=None, header_style="bold")
    for column in ("RUN", "WORKFLOW", "VERSION", "STATUS", "REFERENCE", "CREATED"):
        table.add_column(column, no_wrap=column in {"RUN", "CREATED"})
    for run in runs:
        table.add_row(
            run.id,
            run.workflow,
            run.version,
            status(run.status),
            run.reference_id or "",
            when(run.created_at),
        )
    return table


def _fields(rows: Iterable[tuple[str, RenderableType | str | None]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in rows:
        if value not in (None, ""):
            grid.add_row(name, value)
    return grid


def _section(title: str, body: RenderableType) -> Group:
    return Group(Text(""), Text(title, style="bold underline"), body)


def _timeline(tasks: list[TaskRecord]) -> Table:
    """Each task call and each of its attempts, with durations and errors."""
    table = Table(box=None, header_style="bold")
    for column in ("TASK", "ATTEMPT", "STATUS", "STARTED", "DURATION", "ERROR"):
        table.add_column(column, no_wrap=column != "ERROR")
    for task in tasks:
        name = task.name if task.occurrence == 0 else f"{task.name} #{task.occurrence}"
        if not task.attempts:
            table.add_row(name, "", status(task.status), when(task.created_at), "", "")
        for attempt in task.attempts:
            table.add_row(
                name,
                str(attempt.attempt),
                status(attempt.status),
                when(attempt.started_at),
                duration(attempt.started_at, attempt.finished_at),
                error(attempt.error),
            )
            name = ""
        if task.next_attempt_at is not None:
            table.add_row("", "", Text("retrying", style="yellow"), when(task.next_attempt_at))
    return table


def run_detail(detail: RunDetail, children: Tree | None) -> Group:
    """A run: its header, input and outcome, task timeline, waits, events, children, history."""
    header = Text.assemble(("Run ", "bold"), (detail.id, "bold"), "  ", status(detail.status))
    if detail.pause_requested:
        header.append("  (pause requested)", style="yellow")
    parts: list[RenderableType] = [
        header,
        _fields(
            [
                ("workflow", f"{detail.workflow} {detail.version}"),
                ("pool", detail.pool),
                ("attempt", str(detail.attempt)),
                ("reference id", detail.reference_id),
                ("parent", detail.parent_run_id),
                ("schedule", detail.schedule_id),
                ("continued from", detail.continued_from),
                ("continued as", detail.continued_as),
                ("created", when(detail.created_at)),
                ("starts at", when(detail.start_at)),
                ("deadline", when(detail.deadline_at)),
                ("finished", when(detail.finished_at)),
                ("took", duration(detail.created_at, detail.finished_at)),
                (
                    "waiting",
                    Text(detail.pending_reason, style="yellow") if detail.pending_reason else None,
                ),
            ]
        ),
        _section("Input", payload(detail.input)),
    ]
    if detail.status == RunStatus.COMPLETED:
        parts.append(_section("Result", payload(detail.result)))
    if detail.error is not None:
        parts.append(_section("Error", error(detail.error)))
    if detail.tasks:
        parts.append(_section("Tasks", _timeline(detail.tasks)))
    if detail.waits:
        waits = Table(box=None, header_style="bold")
        for column in ("KIND", "WHAT", "DUE"):
            waits.add_column(column)
        for wait in detail.waits:
            what = wait.child_run_id or wait.name or wait.address or ""
            waits.add_row(wait.kind, what, when(wait.due_at))
        parts.append(_section("Waiting for", waits))
    if detail.sleeps or detail.event_waits:
        table = Table(box=None, header_style="bold")
        for column in ("KIND", "NAME", "STATUS", "UNTIL"):
            table.add_column(column)
        for sleep in detail.sleeps:
            table.add_row("sleep", sleep.name, sleep.status, when(sleep.wake_at))
        for event_wait in detail.event_waits:
            table.add_row("event", event_wait.name, event_wait.status, when(event_wait.timeout_at))
        parts.append(_section("Waits", table))
    if detail.events:
        events = Table(box=None, header_style="bold")
        for column in ("EVENT", "RECEIVED", "ORIGIN", "CONSUMED", "DATA"):
            events.add_column(column)
        for event in detail.events:
            events.add_row(
                event.name,
                when(event.received_at),
                event.origin,
                "yes" if event.consumed else "no",
                payload(event.data, inline=True),
            )
        parts.append(_section("Events", events))
    if children is not None:
        parts.append(_section("Children", children))
    if detail.notices:
        notices = Text("\n".join(f"{when(n.at)}  {n.message}" for n in detail.notices))
        parts.append(_section("Notices", notices))
    history = Table(box=None, header_style="bold")
    for column in ("#", "AT", "WHAT", "FROM", "TO", "REASON"):
        history.add_column(column)
    task_names: dict[str, str] = {task.id: task.name for task in detail.tasks}
    for row in detail.history:
        what = "run" if row.entity == "run" else f"task {task_names.get(row.entity_id, '')}"
        history.add_row(
            str(row.seq), when(row.at), what, row.from_status or "", row.to_status, row.reason or ""
        )
    parts.append(_section("History", history))
    return Group(*parts)


def child_label(child: ChildRecord) -> Text:
    """A child run as a line of the children tree."""
    return Text.assemble(
        child.run_id, "  ", f"{child.workflow} {child.version}", "  ", status(child.status)
    )


def dry_run_report(report: DryRunReport) -> Group:
    """One run's dry run: its outcome, the calls reused and not, the first that would run."""
    outcome = Text(report.outcome.replace("_", " "), style=_DRY_RUN_STYLES[report.outcome])
    return _section(
        f"run {report.run_id} on {report.version}",
        _fields(
            [
                ("outcome", outcome),
                ("reused", _calls(report.reused, "none")),
                ("not reused", _calls(report.not_reused, "none")),
                ("would run", _calls([report.would_run] if report.would_run else [], "nothing")),
                ("stopped", Text(report.stopped_at)),
            ]
        ),
    )


_DRY_RUN_STYLES = {
    "runs_a_task": "yellow",
    "waits": "blue",
    "completes": "green",
    "fails": "red",
    "writes": "yellow",
}
"""Colours of dry-run outcomes: what would just wait or complete, what would run or fail."""


def _calls(calls: list[RecordedCall], none: str) -> Text:
    """Task calls, one a line (`name` then `#occurrence` past the first, then the address)."""
    if not calls:
        return Text(none, style="dim")
    lines = [
        f"{c.name}{'' if c.occurrence == 0 else f' #{c.occurrence}'}  ({c.address})" for c in calls
    ]
    return Text("\n".join(lines))


def schedules_table(schedules: Iterable[Schedule]) -> Table:
    """One row per schedule: id, name, what it starts, when, whether paused."""
    table = Table(box=None, header_style="bold")
    for column in ("SCHEDULE", "NAME", "WORKFLOW", "VERSION", "WHEN", "NEXT", "STATE"):
        table.add_column(column, no_wrap=column == "SCHEDULE")
    for schedule in schedules:
        table.add_row(
            schedule.id,
            schedule.name,
            schedule.workflow,
            schedule.version,
            _cadence(schedule),
            when(schedule.next_fire_at),
            Text("paused", style="yellow") if schedule.paused else Text("active", style="green"),
        )
    return table


def _cadence(schedule: Schedule) -> str:
    if schedule.cron is not None:
        return f"cron {schedule.cron} ({schedule.timezone})"
    return f"every {schedule.every}"


def schedule_detail(schedule: Schedule) -> Group:
    """One schedule: its definition and where it stands."""
    return Group(
        Text.assemble(("Schedule ", "bold"), (schedule.id, "bold")),
        _fields(
            [
                ("name", schedule.name),
                ("starts", f"{schedule.workflow} {schedule.version}"),
                ("when", _cadence(schedule)),
                ("overlap", schedule.overlap.value),
                ("catch up", _catch_up(schedule)),
                ("pool", schedule.pool),
                ("timeout", None if schedule.timeout is None else str(schedule.timeout)),
                ("state", "paused" if schedule.paused else "active"),
                ("next", when(schedule.next_fire_at)),
                ("last run", schedule.last_run_id),
                ("created", when(schedule.created_at)),
                ("failures", str(schedule.timer_failures) if schedule.timer_failures else None),
                ("last failure", error(schedule.timer_error) if schedule.timer_error else None),
            ]
        ),
        _section("Input", payload(schedule.input)),
    )


def _catch_up(schedule: Schedule) -> str:
    if schedule.catch_up != "all":
        return schedule.catch_up.value
    return f"all, within {schedule.catch_up_window or '1 day'}"


def rate_limits_table(limits: Iterable[RateLimitInfo]) -> Table:
    """One row per rate limit: its name, how many units per how long, when last set."""
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "LIMIT", "PER", "UPDATED"):
        table.add_column(column)
    for info in limits:
        table.add_row(info.name, str(info.limit), str(info.per), when(info.updated_at))
    return table


def concurrency_limits_table(limits: Iterable[ConcurrencyLimit]) -> Table:
    """One row per workflow limit: how many runs at once, counted how, set by whom."""
    table = Table(box=None, header_style="bold")
    for column in ("WORKFLOW", "LIMIT", "COUNTED", "STRATEGY", "SET BY", "UPDATED"):
        table.add_column(column)
    for info in limits:
        counted = "per key" if info.per_key else "whole workflow"
        when_set = when(info.updated_at)
        row = (info.workflow, str(info.limit), counted, info.strategy.value, info.source, when_set)
        table.add_row(*row)
    return table


def retention_line(info: RetentionInfo) -> str:
    """`namespace billing keeps ended runs 30d (its own, set 2026-...)`."""
    kept = "forever" if info.retention is None else f"{_span(info.retention)} after they end"
    source = "the server's setting" if info.source == "server" else "its own setting"
    since = f", since {when(info.updated_at)}" if info.updated_at is not None else ""
    return f"namespace {info.namespace} keeps ended runs {kept} ({source}{since})"


def _span(span: timedelta) -> str:
    """`30d`, `12h`, `90m`, `45s`: the largest whole unit."""
    seconds = int(span.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{span.total_seconds():g}s"


def workers_table(workers: Iterable[WorkerSummary]) -> Table:
    """One row per worker: id, what it serves, the runs it holds, when last seen."""
    table = Table(box=None, header_style="bold")
    for column in ("WORKER", "SERVES", "POOLS", "RUNNING", "LAST SEEN", "STATE"):
        table.add_column(column)
    for worker in workers:
        serves = sorted({f"{c.workflow} {c.version}" for c in worker.capabilities})
        pools = sorted({c.pool for c in worker.capabilities})
        table.add_row(
            worker.id,
            "\n".join(serves),
            ", ".join(pools),
            str(worker.running),
            when(worker.last_seen_at),
            Text("live", style="green") if worker.live else Text("gone", style="dim"),
        )
    return table


def _serves(endpoint: EndpointInfo) -> list[str]:
    if endpoint.kind == "tasks":
        return list(endpoint.tasks)
    return [f"{w.workflow} {w.version} (pool {w.pool})" for w in endpoint.workflows]


def endpoints_table(endpoints: Iterable[EndpointInfo]) -> Table:
    """One row per push endpoint: id, URL, what it serves, how its pushes fare."""
    table = Table(box=None, header_style="bold")
    for column in ("ENDPOINT", "KIND", "URL", "SERVES", "STATUS", "CREATED"):
        table.add_column(column)
    for endpoint in endpoints:
        table.add_row(
            endpoint.id,
            endpoint.kind,
            Text(endpoint.url),  # not markup: a URL may hold brackets
            Text("\n".join(_serves(endpoint))),
            status(endpoint.status),
            when(endpoint.created_at),
        )
    return table


def endpoint_detail(endpoint: EndpointInfo) -> Group:
    """One push endpoint: what it serves, its limits, its secrets' key ids, its health."""
    secrets = [
        s.key_id if s.expires_at is None else f"{s.key_id} (until {when(s.expires_at)})"
        for s in endpoint.secrets
    ]
    failing = endpoint.failing_since is not None
    return Group(
        Text.assemble(("Endpoint ", "bold"), (endpoint.id, "bold")),
        _fields(
            [
                ("url", Text(endpoint.url)),  # not markup: a URL may hold brackets
                ("kind", endpoint.kind),
                ("serves", Text("\n".join(_serves(endpoint)))),
                ("in flight", f"at most {endpoint.max_in_flight} per server replica"),
                ("timeout", str(endpoint.timeout)),
                ("secrets", ", ".join(secrets)),
                ("status", status(endpoint.status)),
                ("failures", str(endpoint.failures) if endpoint.failures else None),
                ("failing since", when(endpoint.failing_since) if failing else None),
                ("last error", Text(endpoint.last_error) if endpoint.last_error else None),
                ("next push", when(endpoint.retry_at) if endpoint.retry_at else None),
                ("created", when(endpoint.created_at)),
            ]
        ),
    )
