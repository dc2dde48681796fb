"""Flow control: concurrency limits, priorities and fairness between concurrency keys.

A workflow has at most one limit (`concurrency_limits`, all its versions): declared
by the starts that carry one (`source = 'code'`, the last declaration wins), or set
by an operator (`'operator'`), which wins until it is deleted. The limit counts a
*group* of runs: each concurrency key apart (`per_key`), or the whole workflow.

Only a running run (claimed) holds a slot of its group, and a run cleaning up (cancelled
or timed out, claimed for its cleanup or not) until it ends: a queued, sleeping, waiting
or suspended run does not, nor one whose claim was released. A claim takes the
groups' locks (PostgreSQL: advisory, by hash; SQLite has a single writer), counts
their running runs and skips the candidates whose group is full (or locked by
another claim), so the limit holds across every worker and server replica. Limits
are read fresh at each claim that sees a limited candidate, and not at all otherwise.

Claims take queued runs by `rank`, lowest first. A start ranks its run at
`max(now - priority * step, R + quantum)`, where R is the greatest rank among its
key's queued runs of its priority (a run without a key: R is not looked up): a
key's backlog is spread a quantum apart, so other keys' runs interleave (round
robin), and a run waiting `9 * step` goes before any newer run whatever their
priorities (aging).
A run queued again (woken, released, retried) ranks at `now - priority * step`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiki_core import ConcurrencyStrategy, NotFoundError, RunStatus
from aiki_core.wire import ConcurrencyLimit, ConcurrencyLimitPage
from aiki_server._clock import from_ms
from aiki_server._lifecycle import cancel_run_and_descendants
from aiki_server._notify import slots_topic, slots_topics

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiki_core.wire import ConcurrencySpec, SetConcurrencyLimitRequest
    from aiki_server._clock import Clock
    from aiki_server._storage._database import Database, Row, Tx

_RUNNING = [RunStatus.RUNNING.value, RunStatus.CLEANING_UP.value]
"""The statuses that hold a slot: a run cancelled (or timed out) keeps it while it cleans up."""
_QUEUED_OR_RUNNING = [RunStatus.QUEUED.value, RunStatus.RUNNING.value]
_MAX_LIMITS_LISTED = 10_000
_ROUNDS = 4
"""How many times a claim reads further past the full groups it met (see `admit`)."""

LIMITED = (
    "EXISTS (SELECT 1 FROM concurrency_limits c"
    " WHERE c.namespace = runs.namespace AND c.workflow = runs.workflow)"
)
"""A claim's candidates: whether the run's workflow has a limit (a primary key probe)."""


@dataclass(frozen=True, slots=True)
class Group:
    """The runs one concurrency limit counts together."""

    namespace: str
    workflow: str
    key: str | None
    per_key: bool

    @classmethod
    def of(cls, run: Row, limit: Row) -> Group:
        """The group `limit` counts `run` in."""
        per_key = bool(limit["per_key"])
        key = run["concurrency_key"] if per_key else None
        return cls(run["namespace"], run["workflow"], key, per_key)

    def where(self, args: list[Any], unindexed: str = "") -> str:
        """The group's condition on `runs`; its values are appended to `args`.

        `unindexed`: the transaction's (`Tx.unindexed`), when the condition picks the
        rows to read. A group with a key reads its key's range of `runs_concurrency`;
        one without reads the runs of its statuses (`runs_queue`), never every run its
        workflow ever had.
        """
        args += [self.namespace, self.workflow]
        namespace = "namespace" if self.key is not None else f"{unindexed}namespace"
        sql = f"{namespace} = ${len(args) - 1} AND workflow = ${len(args)}"
        if not self.per_key:
            return sql
        if self.key is None:
            return f"{sql} AND concurrency_key IS NULL"
        args.append(self.key)
        return f"{sql} AND concurrency_key = ${len(args)}"

    @property
    def lock_name(self) -> str:
        """What a claim locks while it counts the group's slots."""
        return "\x1f".join(
            ["aiki.concurrency", self.namespace, self.workflow, str(self.per_key), self.key or ""]
        )

    def describe(self) -> str:
        """The group in a sentence."""
        if not self.per_key:
            return f"the concurrency limit of workflow {self.workflow!r}"
        if self.key is None:
            return f"the concurrency limit of workflow {self.workflow!r} (runs without a key)"
        return f"concurrency key {self.key}"

    async def count(self, tx: Tx, statuses: list[str], *, besides: str | None = None) -> int:
        """The group's runs in one of `statuses` (but the run `besides`)."""
        args: list[Any] = []
        sql = f"SELECT COUNT(*) AS n FROM runs WHERE {self.where(args, tx.unindexed)}"
        args.append(tx.array(statuses))
        sql += f" AND status {tx.in_array(len(args))}"
        if besides is not None:
            args.append(besides)
            sql += f" AND id <> ${len(args)}"
        row = await tx.fetchrow(sql, *args)
        return 0 if row is None else int(row["n"])


async def start_rank(
    tx: Tx, namespace: str, workflow: str, key: str | None, priority: int, now: int
) -> int:
    """The rank of a run a start queues: by its priority, behind its key's queued runs.

    Behind those of its priority, that is: their ranks carry the same offset.
    """
    rank = now - priority * tx.flow.step_ms
    if key is not None:
        row = await tx.fetchrow(
            "SELECT MAX(rank) AS r FROM runs WHERE namespace = $1 AND workflow = $2"
            " AND concurrency_key = $3 AND status = $4 AND priority = $5",
            namespace,
            workflow,
            key,
            RunStatus.QUEUED.value,
            priority,
        )
        if row is not None and row["r"] is not None:
            rank = max(rank, int(row["r"]) + tx.flow.quantum_ms)
    return rank


async def limit_row(tx: Tx, namespace: str, workflow: str) -> Row | None:
    """The workflow's limit, or `None`."""
    return await tx.fetchrow(
        "SELECT * FROM concurrency_limits WHERE namespace = $1 AND workflow = $2",
        namespace,
        workflow,
    )


async def declare(tx: Tx, namespace: str, workflow: str, spec: ConcurrencySpec, now: int) -> Row:
    """Note a start's declaration (unless an operator's limit is set); the limit in effect.

    Written only when it differs from what is there: starts that declare the same
    limit over and over only read it.
    """
    current = await limit_row(tx, namespace, workflow)
    declared = {
        "limit": spec.limit,
        "strategy": spec.strategy.value,
        "per_key": int(spec.key is not None),
    }
    if current is not None and (
        current["source"] == "operator"
        or all(current[name] == value for name, value in declared.items())
    ):
        return current
    await _upsert(tx, namespace, workflow, declared, "code", now)
    # an operator's limit set meanwhile (by another replica) was kept: read what holds
    effective = await limit_row(tx, namespace, workflow)
    assert effective is not None
    return effective


async def _upsert(
    tx: Tx, namespace: str, workflow: str, values: dict[str, Any], source: str, now: int
) -> Row:
    """Write a limit; the code's never replaces an operator's."""
    row = {"namespace": namespace, "workflow": workflow, **values, "source": source}
    row["updated_at"] = now
    tx.limited.forget()
    await tx.execute(
        'INSERT INTO concurrency_limits (namespace, workflow, "limit", strategy, per_key,'
        " source, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (namespace, workflow) DO UPDATE SET"
        ' "limit" = excluded."limit", strategy = excluded.strategy,'
        " per_key = excluded.per_key, source = excluded.source, updated_at = excluded.updated_at"
        " WHERE excluded.source = 'operator' OR concurrency_limits.source = 'code'",
        *row.values(),
    )
    return row


async def apply_strategy(tx: Tx, run: Row, limit: Row, now: int) -> bool:
    """Apply the limit's strategy to a run just started; whether the run was cancelled.

    `cancel_newest` cancels the new run when its group already has `limit` runs queued
    or running; `cancel_in_progress` cancels the group's oldest such runs to make
    room for it. Both cancel as a client's cancel does: a worker holding a run sees
    it, and a run that ran cleans up first, in the slot it holds until it ends.
    """
    strategy = ConcurrencyStrategy(limit["strategy"])
    if strategy is ConcurrencyStrategy.QUEUE:
        return False
    group = Group.of(run, limit)
    cap = int(limit["limit"])
    if strategy is ConcurrencyStrategy.CANCEL_NEWEST:
        # starts of one key one at a time: two at once must not both see room
        await tx.lock_key(group.lock_name)
        present = await group.count(tx, _QUEUED_OR_RUNNING, besides=run["id"])
        if present < cap:
            return False
        reason = (
            f"{group.describe()} already has {present} of {cap} runs queued or running"
            " (strategy cancel_newest)"
        )
        await cancel_run_and_descendants(tx, run, now, reason, cleanup=True)
        return True
    args: list[Any] = []
    where = group.where(args, tx.unindexed)
    args += [tx.array(_QUEUED_OR_RUNNING), run["id"]]
    others = await tx.fetch(
        f"SELECT * FROM runs WHERE {where} AND status {tx.in_array(len(args) - 1)}"
        f" AND id <> ${len(args)} ORDER BY created_at, id{tx.lock_rows}",
        *args,
    )
    for old in others[: max(len(others) - cap + 1, 0)]:
        reason = (
            f"cancelled to make room for run {run['id']} under {group.describe()}"
            f" (limit {cap}, strategy cancel_in_progress)"
        )
        await cancel_run_and_descendants(tx, old, now, reason, cleanup=True)
    return False


async def admit(
    tx: Tx,
    namespace: str,
    rows: list[Row],
    max_runs: int,
    fetch_past: Callable[[list[Group]], Awaitable[list[Row]]] | None = None,
) -> list[Row]:
    """The first `max_runs` of a claim's candidates (in rank order) whose group has room.

    Each group met is locked, then its running runs counted: a claim that takes a
    run of the group commits before another one counts it. The lock is only tried:
    a group another claim holds now is passed over (that claim is serving it), so
    no two claims ever wait on each other. When the candidates run out before
    `max_runs` are admitted, `fetch_past(groups)` reads the next ones, without the
    groups found full (a few times at most): a backlog of full groups at the front of
    the queue does not hide the runs behind it.
    """
    limits: dict[str, Row] = {}
    running: dict[Group, int | None] = {}
    """Each group's runs running (with those admitted here); `None`: another claim's."""
    admitted: dict[str, Row] = {}
    for _ in range(_ROUNDS):
        page = len(rows)
        workflows = sorted({row["workflow"] for row in rows} - set(limits))
        if workflows:
            limits |= {
                row["workflow"]: row
                for row in await tx.fetch(
                    "SELECT * FROM concurrency_limits"
                    f" WHERE namespace = $1 AND workflow {tx.in_array(2)}",
                    namespace,
                    tx.array(workflows),
                )
            }
        for index, row in enumerate(rows):
            if len(admitted) == max_runs:
                _wake_passed_over(tx, rows[index:], limits, running)
                return list(admitted.values())
            if row["id"] in admitted:
                continue
            limit = limits.get(row["workflow"])
            if limit is None:
                admitted[row["id"]] = row
                continue
            group = Group.of(row, limit)
            if group not in running:
                mine = await tx.try_lock_key(group.lock_name)
                running[group] = await group.count(tx, _RUNNING) if mine else None
            taken = running[group]
            if taken is None or taken >= int(limit["limit"]):
                continue
            running[group] = taken + 1
            admitted[row["id"]] = row
        full = [
            group
            for group, taken in running.items()
            if taken is None or taken >= int(limits[group.workflow]["limit"])
        ]
        if fetch_past is None or not full or page == 0:
            break
        rows = await fetch_past(full)
        if len(rows) <= len(admitted):  # nothing new past the full groups
            break
    return list(admitted.values())


def _wake_passed_over(
    tx: Tx, rows: list[Row], limits: dict[str, Row], running: dict[Group, int | None]
) -> None:
    """Wake the polls of each group this claim held that has room and `rows` left.

    Another claim passed the group over while this one held its lock (claims never wait
    for one): it would sleep on, with runs it could take queued, until its wait ran out.
    """
    for row in rows:
        limit = limits.get(row["workflow"])
        if limit is None:
            continue
        taken = running.get(Group.of(row, limit))
        if taken is not None and taken < int(limit["limit"]):
            tx.publish(slots_topic(row["namespace"], row["workflow"]))


async def waiting_reason(tx: Tx, run: Row) -> str | None:
    """Why a queued run is held back by its concurrency limit, or `None` if it is not."""
    limit = await limit_row(tx, run["namespace"], run["workflow"])
    if limit is None:
        return None
    group = Group.of(run, limit)
    running = await group.count(tx, _RUNNING)
    if running < int(limit["limit"]):
        return None
    return f"waiting for {group.describe()}: {running} of {limit['limit']} running"


def _model(row: Row) -> ConcurrencyLimit:
    return ConcurrencyLimit(
        workflow=row["workflow"],
        limit=row["limit"],
        strategy=row["strategy"],
        per_key=bool(row["per_key"]),
        source=row["source"],
        updated_at=from_ms(row["updated_at"]),
    )


class ConcurrencyLimits:
    """The operator's side: read, set, list and clear a namespace's limits."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def get(self, namespace: str, workflow: str) -> ConcurrencyLimit:
        """The workflow's limit; `NotFoundError` when it has none."""
        async with self._db.reader() as tx:
            row = await limit_row(tx, namespace, workflow)
        if row is None:
            raise NotFoundError("concurrency limit", workflow)
        return _model(row)

    async def list(self, namespace: str) -> ConcurrencyLimitPage:
        """Every limit of the namespace, by workflow name."""
        async with self._db.reader(off_loop=True) as tx:
            rows = await tx.fetch(
                "SELECT * FROM concurrency_limits WHERE namespace = $1 ORDER BY workflow LIMIT $2",
                namespace,
                _MAX_LIMITS_LISTED,
            )
        return ConcurrencyLimitPage(limits=[_model(row) for row in rows])

    async def set(
        self, namespace: str, workflow: str, req: SetConcurrencyLimitRequest
    ) -> ConcurrencyLimit:
        """Set the operator's limit: it wins over the code's until cleared."""
        values = {"limit": req.limit, "strategy": req.strategy.value, "per_key": int(req.per_key)}

        async def put(tx: Tx) -> Row:
            tx.publish(*slots_topics(namespace, workflow))  # a limit raised may let runs go
            return await _upsert(tx, namespace, workflow, values, "operator", self._clock())

        return _model(await self._db.write(put))

    async def clear(self, namespace: str, workflow: str) -> ConcurrencyLimit:
        """Delete the workflow's limit; the next start that declares one sets it again."""

        async def delete(tx: Tx) -> Row:
            row = await limit_row(tx, namespace, workflow)
            if row is None:
                raise NotFoundError("concurrency limit", workflow)
            await tx.execute(
                "DELETE FROM concurrency_limits WHERE namespace = $1 AND workflow = $2",
                namespace,
                workflow,
            )
            tx.limited.forget()
            tx.publish(*slots_topics(namespace, workflow))  # the runs it held back may go
            return row

        return _model(await self._db.write(delete))
