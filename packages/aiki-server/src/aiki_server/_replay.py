"""What runs recorded, read back for their replay (a claim) or their detail."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiki_server._rows import (
    child_record,
    event_record,
    event_wait_record,
    sleep_record,
    task_record,
)

if TYPE_CHECKING:
    from collections.abc import Collection

    from aiki_server._storage._database import Row, Tx


async def replay_parts(
    tx: Tx, run_ids: list[str], *, first_claims: Collection[str] = ()
) -> dict[str, dict[str, list[Any]]]:
    """Tasks, sleeps, event waits, events and children of each run, for replay or detail.

    Runs in `first_claims` have never been claimed: nothing but events sent to them
    can exist yet, so only their events are read.
    """
    parts: dict[str, dict[str, list[Any]]] = {
        run_id: {"tasks": [], "sleeps": [], "event_waits": [], "events": [], "children": []}
        for run_id in run_ids
    }
    # every list of ids is one array parameter: a run may have any number of tasks
    for e in await tx.fetch(
        f"SELECT * FROM events WHERE run_id {tx.in_array(1)} ORDER BY received_at, id",
        tx.array(run_ids),
    ):
        parts[e["run_id"]]["events"].append(event_record(e))
    resumed = [run_id for run_id in run_ids if run_id not in first_claims]
    if not resumed:
        return parts
    ids = tx.array(resumed)
    in_ids = tx.in_array(1)
    tasks = await tx.fetch(
        f"SELECT * FROM tasks WHERE run_id {in_ids} ORDER BY created_at, id", ids
    )
    attempts: dict[str, list[Row]] = {}
    if tasks:
        for a in await tx.fetch(
            "SELECT a.* FROM task_attempts a JOIN tasks t ON t.id = a.task_id"
            f" WHERE t.run_id {in_ids} ORDER BY a.task_id, a.attempt",
            ids,
        ):
            attempts.setdefault(a["task_id"], []).append(a)
    for t in tasks:
        parts[t["run_id"]]["tasks"].append(task_record(t, attempts.get(t["id"], [])))
    for sl in await tx.fetch(
        f"SELECT * FROM sleeps WHERE run_id {in_ids} ORDER BY name, occurrence", ids
    ):
        parts[sl["run_id"]]["sleeps"].append(sleep_record(sl))
    for w in await tx.fetch(
        f"SELECT * FROM event_waits WHERE run_id {in_ids} ORDER BY name, occurrence", ids
    ):
        parts[w["run_id"]]["event_waits"].append(event_wait_record(w))
    for c in await tx.fetch(
        f"SELECT * FROM runs WHERE parent_run_id {in_ids} ORDER BY created_at, id", ids
    ):
        parts[c["parent_run_id"]]["children"].append(child_record(c))
    return parts
