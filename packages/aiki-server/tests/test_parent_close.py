"""Parent-close policies: what happens to a child's run when its parent ends, however it ends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from server_api import claim, claim_one, error_of, get_run, start, timer_pass, transition

if TYPE_CHECKING:
    from server_api import Harness

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
