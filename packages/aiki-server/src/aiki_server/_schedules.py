"""Schedules: create, list, read, pause, resume and delete them, and fire the due ones.

A schedule's occurrences are its cron expression's times in its timezone (cronsim,
minute resolution, Vixie cron's DST behaviour), or `created_at + k * every`. The
timer daemon fires a due schedule in its own pass: one run per occurrence, with the
reference id `schedule:<schedule id>:<occurrence in epoch ms>` and the schedule's
`timeout` (the run's deadline is its start plus it, as for a run started by hand),
started through `_starts.start_run_in` in the same transaction that advances
`next_fire_at`, so a restart can neither lose nor repeat an occurrence.

After downtime (or any delay) a schedule's catch-up policy says which missed
occurrences start: `latest` (the default) starts the most recent one, `all` every one
within its window (oldest first, at most `CATCH_UP_BATCH` a pass, the rest in the next
passes), `none` only one that is at most `ON_TIME_MS` late. It then continues with the
first occurrence after now.

A schedule is updated in place (its id and runs stay), and a backfill starts the runs
of the past occurrences of a span, with the same reference ids as firing uses: neither
a second backfill nor the schedule's own firing starts an occurrence twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError
from ulid import ULID

from aiki_core import (
    CatchUpPolicy,
    ConflictError,
    NotFoundError,
    OverlapPolicy,
    PayloadValidationError,
    ReferenceIdConflictError,
    RunStatus,
)
from aiki_core.wire import (
    MAX_BACKFILL,
    BackfillRequest,
    BackfillResponse,
    CreateScheduleRequest,
    Schedule,
    SchedulePage,
    StartRunRequest,
    UpdateScheduleRequest,
    content_hash,
    from_millis,
    to_millis,
)
from aiki_server._clock import from_ms, to_ms
from aiki_server._lifecycle import TERMINAL, cancel_run_and_descendants, lock_run
from aiki_server._notify import TIMERS
from aiki_server._rows import decode_cursor, encode_cursor, load, load_error
from aiki_server._starts import start_run_in

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime, timedelta
    from typing import Any

    from aiki_server._clock import Clock
    from aiki_server._limits import Limits
    from aiki_server._storage._database import Database, Row, Tx


ON_TIME_MS = 60_000
"""How late an occurrence may fire and not count as missed (`catch_up: none`)."""
CATCH_UP_BATCH = 100
"""The most missed occurrences one pass starts for `catch_up: all`."""
DEFAULT_WINDOW_MS = 24 * 3600 * 1000
"""How far back `catch_up: all` looks when the schedule does not say."""


@dataclass(frozen=True, slots=True)
class Cadence:
    """When a schedule's occurrences fall, in epoch milliseconds."""

    cron: str | None
    every_ms: int | None
    timezone: str
    anchor: int
    """`created_at`: `every` occurrences are `anchor + k * every_ms`, k >= 1."""

    @classmethod
    def of(cls, row: Row) -> Cadence:
        """The cadence of a `schedules` row."""
        return cls(row["cron"], row["every_ms"], row["timezone"], row["created_at"])

    def _local(self, ms: int) -> datetime:
        moment = from_ms(ms)
        assert moment is not None
        return moment.astimezone(ZoneInfo(self.timezone))

    def next_after(self, now: int) -> int | None:
        """The first occurrence after `now`; `None` if there is none (cron: in 50 years)."""
        if self.every_ms is not None:
            return self.anchor + ((now - self.anchor) // self.every_ms + 1) * self.every_ms
        assert self.cron is not None
        # read in the hour an autumn DST change repeats, cronsim may answer a time of its
        # first pass, before `now`: due again at once, the timer daemon would fire it
        # pass after pass without a pause
        return next((at for at in self._times(now) if at > now), None)

    def latest(self, now: int, *, since: int) -> int:
        """The last occurrence at or before `now`, knowing `since` <= `now` is one."""
        if self.every_ms is not None:
            return self.anchor + (now - self.anchor) // self.every_ms * self.every_ms
        assert self.cron is not None
        # cronsim's reverse iteration starts strictly before its start: look from now + 1 ms
        before = next(CronSim(self.cron, self._local(now + 1), reverse=True), None)
        latest = since
        if before is not None and to_ms(before) <= now:  # in a DST gap, it may answer later
            latest = max(to_ms(before), since)
        # read in the hour an autumn DST change repeats, it may answer one of a day before
        for at in self._times(latest):
            if at > now:
                break
            latest = max(latest, at)
        return latest

    def between(self, start: int, end: int, limit: int) -> list[int]:
        """The occurrences in [`start`, `end`), oldest first, at most `limit` of them.

        `every` occurrences are the anchor's grid on both sides of it.
        """
        found: list[int] = []
        if self.every_ms is not None:
            at = self.anchor - (self.anchor - start) // self.every_ms * self.every_ms
            while at < end and len(found) < limit:
                found.append(at)
                at += self.every_ms
            return found
        assert self.cron is not None
        # cronsim starts after the minute it is given: from just before `start` (and
        # skipping the times before it that `next_after` skips)
        for at in self._times(start - 1):
            if at >= end or len(found) >= limit:
                break
            if at >= start:
                found.append(at)
        return found

    def _times(self, after: int) -> Iterator[int]:
        """The cron's times cronsim reads from `after` on, in epoch milliseconds."""
        assert self.cron is not None
        return (to_ms(moment) for moment in CronSim(self.cron, self._local(after)))


def _checked_cadence(
    cron: str | None, every: timedelta | None, timezone: str, anchor: int, now: int
) -> tuple[Cadence, int]:
    """The cadence and its first occurrence after `now`; a 422 naming `cron` if it has none."""
    every_ms = None if every is None else to_millis(every)
    cadence = Cadence(cron, every_ms, timezone, anchor)
    try:
        first = cadence.next_after(now)
    except CronSimError as exc:
        raise _bad_cron(cron, str(exc)) from None
    if first is None:
        raise _bad_cron(cron, "it matches no time in the next 50 years")
    return cadence, first


def _definition(values: dict[str, Any]) -> str:
    """The fingerprint of a schedule's definition (its `schedules` column values).

    What came after the first schedules counts only when set, so a definition
    without it keeps the hash it had before.
    """
    defined: list[object] = [
        values["workflow"],
        values["version"],
        values["input_hash"] or content_hash(load(values["input"])),
        values["cron"],
        values["every_ms"],
        values["timezone"],
        values["overlap"],
        values["pool"],
    ]
    if values["timeout_ms"] is not None:
        defined.append(values["timeout_ms"])
    if values["catch_up"] != CatchUpPolicy.LATEST or values["catch_up_window_ms"] is not None:
        defined += [values["catch_up"], values["catch_up_window_ms"]]
    return content_hash(defined)


def _bad_cron(cron: str | None, problem: str) -> PayloadValidationError:
    return PayloadValidationError(
        f"invalid request: body.cron: {cron!r} is not a valid cron expression: {problem}",
        errors=[{"loc": ["body", "cron"], "msg": problem, "type": "value_error"}],
    )


def reference_id(schedule_id: str, occurrence: int) -> str:
    """The reference id of the run an occurrence starts."""
    return f"schedule:{schedule_id}:{occurrence}"


def _ms(duration: timedelta | None) -> int | None:
    return None if duration is None else to_millis(duration)


def _run_timeout(row: Row) -> timedelta | None:
    """The timeout of the runs a `schedules` row starts."""
    return None if row["timeout_ms"] is None else from_millis(row["timeout_ms"])


def _window(row: Row) -> timedelta | None:
    return None if row["catch_up_window_ms"] is None else from_millis(row["catch_up_window_ms"])


def schedule_model(row: Row) -> Schedule:
    """A `schedules` row as a `Schedule`."""
    return Schedule(
        id=row["id"],
        namespace=row["namespace"],
        name=row["name"],
        workflow=row["workflow"],
        version=row["version"],
        input=load(row["input"]),
        cron=row["cron"],
        every=None if row["every_ms"] is None else from_millis(row["every_ms"]),
        timezone=row["timezone"],
        overlap=row["overlap"],
        pool=row["pool"],
        timeout=_run_timeout(row),
        catch_up=row["catch_up"],
        catch_up_window=_window(row),
        paused=bool(row["paused"]),
        next_fire_at=from_ms(row["next_fire_at"]),
        last_run_id=row["last_run_id"],
        created_at=from_ms(row["created_at"]),
        updated_at=from_ms(row["updated_at"]),
        timer_failures=row.get("timer_failures", 0),
        timer_error=load_error(row.get("timer_error")),
    )


class Schedules:
    """The schedule operations of the API, and firing."""

    def __init__(self, db: Database, clock: Clock, limits: Limits) -> None:
        self._db = db
        self._clock = clock
        self._limits = limits

    async def create(self, namespace: str, req: CreateScheduleRequest) -> tuple[Schedule, bool]:
        """Create a schedule; whether it is new (the same definition again is not).

        A name is unique per namespace: another definition under it is a conflict.
        """
        now = self._clock()
        cadence, first = _checked_cadence(req.cron, req.every, req.timezone, now, now)
        values = {
            "id": req.id or str(ULID()),
            "namespace": namespace,
            "name": req.name,
            "workflow": req.workflow,
            "version": req.version,
            # each run it starts carries it: held to the bound of a run's input
            "input": self._limits.dump_payload(req.input, "input"),
            "input_hash": req.input_hash,
            "cron": req.cron,
            "every_ms": cadence.every_ms,
            "timezone": req.timezone,
            "overlap": req.overlap.value,
            "pool": req.pool,
            "timeout_ms": None if req.timeout is None else to_millis(req.timeout),
            "catch_up": req.catch_up.value,
            "catch_up_window_ms": _ms(req.catch_up_window),
            "paused": 0,
            "next_fire_at": first,
            "last_run_id": None,
            "created_at": now,
            "updated_at": now,
        }
        values["definition_hash"] = definition = _definition(values)

        async def insert(tx: Tx) -> tuple[Schedule, bool]:
            existing = await tx.fetchrow(
                "SELECT * FROM schedules WHERE namespace = $1 AND name = $2", namespace, req.name
            )
            if existing is not None:
                if existing["definition_hash"] != definition:
                    raise ConflictError(
                        f"schedule {req.name!r} exists with another definition",
                        details={"schedule_id": existing["id"], "name": req.name},
                    )
                return schedule_model(existing), False
            if req.id is not None and await tx.fetchrow(
                "SELECT id FROM schedules WHERE id = $1", req.id
            ):
                raise ConflictError(
                    f"a schedule with id {req.id} exists", details={"schedule_id": req.id}
                )
            placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
            await tx.execute(
                f"INSERT INTO schedules ({', '.join(values)}) VALUES ({placeholders})",
                *values.values(),
            )
            tx.publish(TIMERS)
            return schedule_model(values), True

        return await self._db.write(insert)

    async def list(self, namespace: str, limit: int, cursor: str | None) -> SchedulePage:
        """Schedules newest first, one keyset page at a time."""
        args: list[object] = [namespace]
        keyset = ""
        if cursor is not None:
            created_at, schedule_id = decode_cursor(cursor)
            args += [created_at, schedule_id]
            keyset = " AND (created_at < $2 OR (created_at = $2 AND id < $3))"
        args.append(limit + 1)
        async with self._db.reader(off_loop=True) as tx:
            rows = await tx.fetch(
                f"SELECT * FROM schedules WHERE namespace = $1{keyset}"
                f" ORDER BY created_at DESC, id DESC LIMIT ${len(args)}",
                *args,
            )
        page = rows[:limit]
        next_cursor = None
        if len(rows) > limit:
            next_cursor = encode_cursor(page[-1]["created_at"], page[-1]["id"])
        return SchedulePage(schedules=[schedule_model(r) for r in page], next_cursor=next_cursor)

    async def get(self, namespace: str, schedule_id: str) -> Schedule:
        """One schedule."""
        async with self._db.reader() as tx:
            return schedule_model(await _schedule(tx, namespace, schedule_id))

    async def pause(self, namespace: str, schedule_id: str) -> Schedule:
        """Stop firing until resumed (pausing a paused schedule changes nothing)."""

        async def hold(tx: Tx) -> Schedule:
            await _schedule(tx, namespace, schedule_id, lock=True)
            now = self._clock()
            await tx.execute(
                "UPDATE schedules SET paused = 1, updated_at = $2 WHERE id = $1 AND paused = 0",
                schedule_id,
                now,
            )
            return schedule_model(await _schedule(tx, namespace, schedule_id))

        return await self._db.write(hold)

    async def resume(self, namespace: str, schedule_id: str) -> Schedule:
        """Fire again, from the first occurrence after now (nothing missed while paused)."""

        async def release(tx: Tx) -> Schedule:
            row = await _schedule(tx, namespace, schedule_id, lock=True)
            now = self._clock()
            if row["paused"]:
                await tx.execute(
                    "UPDATE schedules SET paused = 0, next_fire_at = $2, updated_at = $3,"
                    " timer_failures = 0, timer_error = NULL WHERE id = $1",
                    schedule_id,
                    Cadence.of(row).next_after(now),
                    now,
                )
                tx.publish(TIMERS)
            return schedule_model(await _schedule(tx, namespace, schedule_id))

        return await self._db.write(release)

    async def delete(self, namespace: str, schedule_id: str) -> Schedule:
        """Delete the schedule (its runs stay); the schedule as it was."""

        async def remove(tx: Tx) -> Schedule:
            row = await _schedule(tx, namespace, schedule_id, lock=True)
            await tx.execute("DELETE FROM schedules WHERE id = $1", schedule_id)
            return schedule_model(row)

        return await self._db.write(remove)

    async def update(
        self, namespace: str, schedule_id: str, req: UpdateScheduleRequest
    ) -> Schedule:
        """Change the schedule in place (see `UpdateScheduleRequest`); it as it is now."""
        given = req.model_fields_set
        # refused before any write, as at creation
        stored_input = self._limits.dump_payload(req.input, "input") if "input" in given else ""

        async def change(tx: Tx) -> Schedule:
            row = await _schedule(tx, namespace, schedule_id, lock=True)
            now = self._clock()
            values = {name: row[name] for name in _UPDATED}
            recadenced = bool({"cron", "every", "timezone"} & given)
            if req.cron is not None or req.every is not None:
                values["cron"] = req.cron
                values["every_ms"] = _ms(req.every)
            if req.timezone is not None:
                values["timezone"] = req.timezone
            if "input" in given:
                values["input"] = stored_input
                values["input_hash"] = req.input_hash
            if req.overlap is not None:
                values["overlap"] = req.overlap.value
            if req.catch_up is not None:
                values["catch_up"] = req.catch_up.value
            if "timeout" in given:
                values["timeout_ms"] = _ms(req.timeout)
            if "catch_up_window" in given:
                values["catch_up_window_ms"] = _ms(req.catch_up_window)
            every = None if values["every_ms"] is None else from_millis(values["every_ms"])
            _, first = _checked_cadence(
                values["cron"], every, values["timezone"], row["created_at"], now
            )
            resumed = row["paused"] and req.paused is False
            if req.paused is not None:
                values["paused"] = int(req.paused)
            if recadenced or resumed:  # nothing missed before: on from the next occurrence
                values |= {"next_fire_at": first, "timer_failures": 0, "timer_error": None}
            values["definition_hash"] = _definition({**row, **values})
            values["updated_at"] = now
            assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(values, start=2))
            await tx.execute(
                f"UPDATE schedules SET {assignments} WHERE id = $1", schedule_id, *values.values()
            )
            tx.publish(TIMERS)
            return schedule_model(await _schedule(tx, namespace, schedule_id))

        return await self._db.write(change)

    async def backfill(
        self, namespace: str, schedule_id: str, req: BackfillRequest
    ) -> BackfillResponse:
        """Start the run of each past occurrence in [`start`, `end`), once per occurrence.

        Occurrences after now (or before 1970) are left out. A span of more than
        `MAX_BACKFILL` occurrences is refused (409) before anything starts.
        """

        async def start(tx: Tx) -> BackfillResponse:
            schedule = await _schedule(tx, namespace, schedule_id, lock=True)
            now = self._clock()
            # past occurrences only, and none before 1970 (cron times are local times,
            # which the first moments of the calendar have none of)
            start, end = max(to_ms(req.start), 0), min(to_ms(req.end), now + 1)
            occurrences = Cadence.of(schedule).between(start, end, MAX_BACKFILL + 1)
            if len(occurrences) > MAX_BACKFILL:
                # the body is valid: the schedule's cadence makes the span too long (409)
                raise ConflictError(
                    f"the span holds more than {MAX_BACKFILL} occurrences of schedule"
                    f" {schedule_id}; backfill it in parts",
                    details={"schedule_id": schedule_id, "max_occurrences": MAX_BACKFILL},
                )
            run_ids: list[str] = []
            started = 0
            for occurrence in occurrences:
                run_id, created = await _start_occurrence(tx, schedule, occurrence, now)
                run_ids.append(run_id)
                started += created
            return BackfillResponse(run_ids=run_ids, started=started)

        return await self._db.write(start)

    async def fire(self, tx: Tx, schedule: Row, now: int) -> None:
        """Fire a due (locked) schedule: start what its catch-up policy says is due.

        `next_fire_at` moves to the first occurrence after now, or, for `catch_up: all`
        with missed occurrences left over, to the next of those (due at once).
        """
        cadence = Cadence.of(schedule)
        occurrences, next_fire_at = _due(schedule, cadence, now)
        last_run_id = schedule["last_run_id"]
        for occurrence in occurrences:
            allowed, held_until = await self._previous_allows(
                tx, {**schedule, "last_run_id": last_run_id}, now
            )
            if allowed:
                last_run_id, _ = await _start_occurrence(
                    tx, schedule, occurrence, now, held_until=held_until
                )
        await tx.execute(
            "UPDATE schedules SET next_fire_at = $2, last_run_id = $3, updated_at = $4,"
            " timer_failures = 0, timer_error = NULL WHERE id = $1",
            schedule["id"],
            next_fire_at,
            last_run_id,
            now,
        )
        if next_fire_at is not None and next_fire_at <= now:
            tx.publish(TIMERS)

    async def _previous_allows(self, tx: Tx, schedule: Row, now: int) -> tuple[bool, int | None]:
        """Whether an occurrence may start, given the schedule's last run and overlap policy.

        And until when its run is held back (`None`: not held). `cancel_previous`
        cancels a last run still going (with its descendants) first, as a client's
        cancel does: one that ran cleans up first, and the new run is held (`scheduled`)
        until that cleanup ends (`_lifecycle` queues it then) or its deadline passes. A
        last run itself held so is cancelled, and the new one held in its place.
        """
        if schedule["last_run_id"] is None:
            return True, None
        previous = await lock_run(tx, schedule["last_run_id"], schedule["namespace"])
        if previous is None or previous["status"] in TERMINAL:
            return True, None
        policy = OverlapPolicy(schedule["overlap"])
        if policy is not OverlapPolicy.CANCEL_PREVIOUS:
            return policy is not OverlapPolicy.SKIP, None
        held_until: int | None = None
        if previous["status"] == RunStatus.SCHEDULED:
            held_until = previous["wake_at"]  # held behind a cleanup: the new one takes its place
        if previous["status"] != RunStatus.CLEANING_UP:  # a second cancel would cut it short
            reason = f"schedule {schedule['name']!r} started its next occurrence"
            await cancel_run_and_descendants(tx, previous, now, reason, cleanup=True)
            previous = await lock_run(tx, previous["id"], schedule["namespace"])
            assert previous is not None
        if previous["status"] == RunStatus.CLEANING_UP:
            held_until = previous["deadline_at"]
        return True, held_until


_UPDATED = (
    "input",
    "input_hash",
    "cron",
    "every_ms",
    "timezone",
    "overlap",
    "timeout_ms",
    "catch_up",
    "catch_up_window_ms",
    "paused",
)
"""The columns an update may change (beside its times and definition)."""


def _due(schedule: Row, cadence: Cadence, now: int) -> tuple[list[int], int | None]:
    """The occurrences a due schedule starts now, by its catch-up policy; its next fire time."""
    due = schedule["next_fire_at"]
    latest = cadence.latest(now, since=due)
    policy = CatchUpPolicy(schedule["catch_up"])
    if policy is CatchUpPolicy.LATEST:
        return [latest], cadence.next_after(now)
    if policy is CatchUpPolicy.NONE:
        return ([latest] if now - latest <= ON_TIME_MS else []), cadence.next_after(now)
    window = schedule["catch_up_window_ms"] or DEFAULT_WINDOW_MS
    missed = cadence.between(max(due, now - window), now + 1, CATCH_UP_BATCH + 1)
    if len(missed) > CATCH_UP_BATCH:  # the rest in the next passes, oldest first
        return missed[:CATCH_UP_BATCH], missed[CATCH_UP_BATCH]
    return missed, cadence.next_after(now)


async def _start_occurrence(
    tx: Tx, schedule: Row, occurrence: int, now: int, *, held_until: int | None = None
) -> tuple[str, bool]:
    """Start the run of one occurrence (once: by its reference id); its id, whether new.

    `held_until`: the run is a delayed start until then, at the latest.
    """
    request = StartRunRequest(
        workflow=schedule["workflow"],
        version=schedule["version"],
        input=load(schedule["input"]),
        pool=schedule["pool"],
        reference_id=reference_id(schedule["id"], occurrence),
        timeout=_run_timeout(schedule),
        start_at=None if held_until is None else from_ms(held_until),
    )
    try:
        started = await start_run_in(
            tx, schedule["namespace"], request, now, schedule_id=schedule["id"]
        )
    except ReferenceIdConflictError as exc:
        # a run started by hand under this reference id (or before the schedule's input
        # changed) holds the occurrence; raising would fail every timer pass from now on
        return exc.run_id, False
    return started.run.id, started.created


async def _schedule(tx: Tx, namespace: str, schedule_id: str, *, lock: bool = False) -> Row:
    row = await tx.fetchrow(
        f"SELECT * FROM schedules WHERE id = $1 AND namespace = $2{tx.lock_rows if lock else ''}",
        schedule_id,
        namespace,
    )
    if row is None:
        raise NotFoundError("schedule", schedule_id)
    return row
