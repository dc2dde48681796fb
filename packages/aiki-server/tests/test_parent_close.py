"""Parent-close policies: what happens to a child's run when its parent ends, however it ends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

from aiki_core import RunStatus
from aiki_core.wire import DEFAULT_NAMESPACE
from aiki_server._lifecycle import CLOSE_INLINE, TERMINAL, lock_run, move_run
from aiki_server._notify import WakeHub
from aiki_server._storage._open import open_database
from server_api import (
    claim,
    claim_one,
    error_of,
    get_run,
    plan,
    record_statements,
    start,
    timer_pass,
    transition,
)

if TYPE_CHECKING:
    from server_api import Harness, HarnessFactory

FAIL = {
    "kind": "fail",
    "error": {"type": "builtins.ValueError", "message": "boom", "retryable": False},
}
ENDS = ("completed", "failed", "cancelled", "timed_out")


async def start_child(
    h: Harness, parent: dict[str, Any], name: str, policy: str | None
) -> dict[str, Any]:
    """Start child `name` (workflow `name`) of the claimed `parent` with `policy` (or none)."""
    body: dict[str, Any] = {
        "revision": parent["revision"],
        "address": f"{name}:1",
        "occurrence": 0,
        "workflow": name,
        "version": "1",
    }
    if policy is not None:
        body["parent_close_policy"] = policy
    r = await h.client.post(f"/runs/{parent['id']}/children", json=body)
    assert r.status_code == 201, r.text
    child: dict[str, Any] = r.json()["run"]
    return child


async def end_parent(h: Harness, parent: dict[str, Any], how: str) -> None:
    """End the claimed `parent` as `how` says, through the path that ends it so."""
    if how == "completed":
        r = await transition(h.client, parent["id"], parent["revision"], {"kind": "complete"})
        assert r.status_code == 200, r.text
    elif how == "failed":
        r = await transition(h.client, parent["id"], parent["revision"], FAIL)
        assert r.status_code == 200, r.text
    elif how == "cancelled":
        r = await h.client.post(f"/runs/{parent['id']}/cancel", json={"reason": "enough"})
        assert r.status_code == 200, r.text
        await clean_up(h, parent)
    else:
        h.clock.advance(11_000)  # past the parent's 10 s deadline
        await timer_pass(h)
        await clean_up(h, parent)
    status = "failed" if how == "timed_out" else how
    assert (await get_run(h.client, parent["id"]))["status"] == status


async def children_left(h: Harness) -> bool:
    """Whether an ended parent is marked as having children left for the timer daemon."""
    async with h.app.state.db.reader() as tx:
        marked = await tx.fetch(
            f"SELECT id FROM runs WHERE wake_at IS NOT NULL AND status {tx.in_array(1)}",
            tx.array(list(TERMINAL)),
        )
    return bool(marked)


async def sweep(h: Harness) -> None:
    """Timer passes (as the daemon runs them) until no ended parent has children left."""
    with anyio.fail_after(60):
        while await children_left(h):
            await timer_pass(h)


async def clean_up(h: Harness, parent: dict[str, Any]) -> None:
    """A parent that ran cleans up before it ends: its children close only once it has."""
    detail = await get_run(h.client, parent["id"])
    assert detail["status"] == "cleaning_up"
    assert "cancelled" not in {child["status"] for child in detail["children"]}
    cleanup = (await claim_one(h.client, parent["workflow"]))["run"]
    assert cleanup["id"] == parent["id"]
    r = await transition(h.client, parent["id"], cleanup["revision"], {"kind": "complete"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("how", ENDS)
async def test_each_policy_when_the_parent_ends(harness: Harness, how: str) -> None:
    h = harness
    await start(h.client, workflow="parent", timeout=10_000)
    parent = (await claim_one(h.client, "parent"))["run"]
    default = await start_child(h, parent, "default", None)
    terminate = await start_child(h, parent, "terminate", "terminate")
    request = await start_child(h, parent, "request", "request_cancel")
    abandon = await start_child(h, parent, "abandon", "abandon")
    # the terminated child's own children go by their own policies
    running = (await claim_one(h.client, "terminate"))["run"]
    grandchild = await start_child(h, running, "grandchild", "terminate")
    kept_grandchild = await start_child(h, running, "kept", "abandon")

    await end_parent(h, parent, how)

    ended = "failed" if how == "timed_out" else how
    for child in (default, terminate, grandchild):
        detail = await get_run(h.client, child["id"])
        assert detail["status"] == "cancelled", child["workflow"]
        assert detail["error"]["code"] == "workflow_cancelled"
    terminated = await get_run(h.client, terminate["id"])
    assert terminated["parent_close_policy"] == "terminate"
    assert terminated["error"]["message"] == f"parent run {parent['id']} ended as {ended}"
    assert terminated["history"][-1]["reason"] == f"parent {parent['id']} {ended}"
    cancelled = await get_run(h.client, request["id"])
    assert cancelled["status"] == "cancelled"
    assert cancelled["parent_close_policy"] == "request_cancel"
    # cancelled as a client's cancel is, with the parent's end as its reason
    assert cancelled["error"]["message"] == (
        f"run {request['id']} was cancelled: parent run {parent['id']} ended as {ended}"
    )
    # the terminated child's worker is fenced off
    r = await transition(h.client, running["id"], running["revision"], {"kind": "complete"})
    error_of(r, 409, "stale_revision")

    # abandoned runs live on, and complete on their own
    for kept in (abandon, kept_grandchild):
        assert (await get_run(h.client, kept["id"]))["status"] == "queued"
        claimed = (await claim_one(h.client, kept["workflow"]))["run"]
        r = await transition(h.client, kept["id"], claimed["revision"], {"kind": "complete"})
        assert r.status_code == 200, r.text
        detail = await get_run(h.client, kept["id"])
        assert detail["status"] == "completed"
        assert detail["parent_run_id"] in (parent["id"], running["id"])
    parent_detail = await get_run(h.client, parent["id"])
    assert {c["run_id"]: c["status"] for c in parent_detail["children"]} == {
        default["id"]: "cancelled",
        terminate["id"]: "cancelled",
        request["id"]: "cancelled",
        abandon["id"]: "completed",
    }
    assert await claim(h.client, "grandchild") == []


async def test_a_parent_that_retries_has_not_ended(harness: Harness) -> None:
    h = harness
    await start(h.client, workflow="parent")
    parent = (await claim_one(h.client, "parent"))["run"]
    child = await start_child(h, parent, "child", "terminate")
    r = await transition(h.client, parent["id"], parent["revision"], {**FAIL, "retry_delay": 1000})
    assert r.status_code == 200, r.text
    assert (await get_run(h.client, parent["id"]))["status"] == "awaiting_retry"
    assert (await get_run(h.client, child["id"]))["status"] == "queued"


async def test_a_run_without_a_parent_has_no_policy(harness: Harness) -> None:
    run = await start(harness.client)
    assert (await get_run(harness.client, run["id"]))["parent_close_policy"] is None


async def test_an_unknown_policy_is_refused(harness: Harness) -> None:
    h = harness
    await start(h.client, workflow="parent")
    parent = (await claim_one(h.client, "parent"))["run"]
    r = await h.client.post(
        f"/runs/{parent['id']}/children",
        json={
            "revision": parent["revision"],
            "address": "c:1",
            "occurrence": 0,
            "workflow": "c",
            "version": "1",
            "parent_close_policy": "orphan",
        },
    )
    error_of(r, 422, "payload_validation")
    assert (await get_run(h.client, parent["id"]))["children"] == []


@pytest.mark.parametrize("how", ["completed", "cancelled"])
async def test_a_chain_deeper_than_the_stack_closes(harness: Harness, how: str) -> None:
    """Each level a child of the one before: closed by a loop, whatever the depth."""
    h = harness
    depth = 400  # several frames a level: recursion would pass Python's limit of 1000
    await start(h.client, workflow="level0")
    top = (await claim_one(h.client, "level0"))["run"]
    holder = top
    chain = []
    for level in range(1, depth + 1):
        child = await start_child(h, holder, f"level{level}", "terminate")
        chain.append(child["id"])
        holder = (await claim_one(h.client, f"level{level}"))["run"]
    await end_parent(h, top, how)
    await sweep(h)  # the levels past what the parent's transaction closes
    r = await h.client.get("/runs", params={"status": "cancelled", "limit": 500})
    cancelled = {run["id"] for run in r.json()["runs"]}
    assert set(chain) <= cancelled


@pytest.mark.parametrize(("how", "ends"), [("cancelled", "cancelled"), ("timed_out", "failed")])
async def test_a_request_cancel_child_cleaning_up_finishes_its_cleanup(
    harness: Harness, how: str, ends: str
) -> None:
    h = harness
    await start(h.client, workflow="parent")
    parent = (await claim_one(h.client, "parent"))["run"]
    body = {
        "revision": parent["revision"],
        "address": "request:1",
        "occurrence": 0,
        "workflow": "request",
        "version": "1",
        "parent_close_policy": "request_cancel",
        "timeout": 5_000,
    }
    r = await h.client.post(f"/runs/{parent['id']}/children", json=body)
    assert r.status_code == 201, r.text
    child = r.json()["run"]
    await claim_one(h.client, "request")
    if how == "cancelled":  # cancelled on its own, as the parent goes on
        r = await h.client.post(f"/runs/{child['id']}/cancel", json={"reason": "own"})
        assert r.status_code == 200, r.text
    else:
        h.clock.advance(6_000)
        await timer_pass(h)
    assert (await get_run(h.client, child["id"]))["status"] == "cleaning_up"
    own_error = (await get_run(h.client, child["id"]))["error"]

    r = await transition(h.client, parent["id"], parent["revision"], {"kind": "complete"})
    assert r.status_code == 200, r.text

    # a cancel requested of a run cleaning up already lets that cleanup finish
    assert (await get_run(h.client, child["id"]))["status"] == "cleaning_up"
    cleanup = (await claim_one(h.client, "request"))["run"]
    r = await transition(h.client, child["id"], cleanup["revision"], {"kind": "complete"})
    assert r.status_code == 200, r.text
    detail = await get_run(h.client, child["id"])
    assert detail["status"] == ends
    assert detail["error"] == own_error


def policy_of(i: int) -> str:
    """The policy of child `i` of a wide parent: every kind on both sides of a batch."""
    return {0: "abandon", 1: "request_cancel"}.get(i % 10, "terminate")


async def wide_parent(h: Harness, width: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A claimed parent with `width` queued children (policies by `policy_of`)."""
    await start(h.client, workflow="parent")
    parent = (await claim_one(h.client, "parent"))["run"]
    children = [await start_child(h, parent, f"c{i:04}", policy_of(i)) for i in range(width)]
    return parent, children


async def assert_closed(h: Harness, children: list[dict[str, Any]]) -> None:
    """Each child ended as its policy says; abandoned ones are untouched."""
    r = await h.client.get("/runs", params={"limit": 500})
    status = {run["id"]: run["status"] for run in r.json()["runs"]}
    for i, child in enumerate(children):
        expected = "queued" if policy_of(i) == "abandon" else "cancelled"
        assert status[child["id"]] == expected, (i, policy_of(i))


async def test_a_parent_with_more_children_than_a_batch_ends_and_the_rest_close_after(
    harness: Harness,
) -> None:
    h = harness
    parent, children = await wide_parent(h, CLOSE_INLINE + CLOSE_INLINE // 2)

    r = await transition(h.client, parent["id"], parent["revision"], {"kind": "complete"})

    assert r.status_code == 200, r.text
    assert (await get_run(h.client, parent["id"]))["status"] == "completed"
    await sweep(h)
    await assert_closed(h, children)
    cancelled = await get_run(h.client, children[1]["id"])  # request_cancel: as a client's
    assert cancelled["error"]["message"].endswith(f"parent run {parent['id']} ended as completed")
    # the sweep is done: passes find nothing more, and abandoned runs live on
    await timer_pass(h)
    await assert_closed(h, children)


async def test_children_left_to_close_are_closed_after_a_restart(
    make_harness: HarnessFactory, db_url: str
) -> None:
    width = CLOSE_INLINE + 30
    async with make_harness() as h:
        parent, children = await wide_parent(h, width)
        now = h.clock.now

    # the server ends the parent, and stops before any timer pass
    db = open_database(db_url, WakeHub())
    await db.open()
    try:

        async def end(tx: Any) -> int:
            run = await lock_run(tx, parent["id"], DEFAULT_NAMESPACE)
            assert run is not None
            await move_run(tx, run, RunStatus.COMPLETED, now, "completed", fence=True)
            ended = await tx.fetchrow(
                "SELECT COUNT(*) AS n FROM runs WHERE parent_run_id = $1 AND status = $2",
                parent["id"],
                RunStatus.CANCELLED.value,
            )
            return int(ended["n"])

        # the parent's own transaction closes one batch of its children, no more, and
        # marks the parent for the rest
        assert await db.write(end) == CLOSE_INLINE
        async with db.reader() as tx:
            marked = await tx.fetch(
                "SELECT id, wake_at FROM runs WHERE wake_at IS NOT NULL AND status = $1",
                RunStatus.CANCELLED.value,
            )
            marked += await tx.fetch("SELECT id, wake_at FROM runs WHERE id = $1", parent["id"])
        # the parent alone: the children it closed have none of their own
        assert marked == [{"id": parent["id"], "wake_at": now}]
    finally:
        await db.close()

    async with make_harness() as h:  # the restarted server closes them
        await sweep(h)
        await assert_closed(h, children)


async def test_the_sweep_reads_by_index(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its look when nothing is left, and its read of a parent's children, use indexes."""
    h = harness
    parent, _ = await wide_parent(h, 2)
    sent = record_statements(monkeypatch)
    r = await transition(h.client, parent["id"], parent["revision"], {"kind": "complete"})
    assert r.status_code == 200, r.text
    await timer_pass(h)
    looks = [s for s in sent if "wake_at <= $1 AND status IN ('completed'" in s[0]]
    children = [s for s in sent if s[0].startswith("SELECT * FROM runs WHERE parent_run_id = $1")]
    assert looks
    assert children
    monkeypatch.undo()

    async def plans(tx: Any) -> list[str]:
        (look_sql, look_args), (read_sql, read_args) = looks[-1], children[-1]
        return [await plan(tx, look_sql, *look_args), await plan(tx, read_sql, *read_args)]

    look, read = await h.app.state.db.write(plans)
    assert "runs_wake" in look  # `runs_wake_due` (status, wake_at), or `runs_wake`
    assert "runs_by_child_address" in read  # (parent_run_id, child_address, ...)
