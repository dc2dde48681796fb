"""Moving runs to another version (`POST /migrations`) one page at a time, and dry runs.

A migration moves at most `limit` runs and says whether more are left (`has_more`): runs
it cannot move (running, say) must neither take those places nor hide the runs left.

A dry run is handed to a live worker of the new version through its directives poll
and answered with the worker's reports (`POST /dry-runs/{job_id}/report`); here the
test plays the worker over HTTP.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from aiki_server._storage._postgres import PostgresTx
from aiki_server._storage._sqlite import SqliteTx, _ThreadedSqliteTx
from server_api import (
    FAR_FUTURE,
    START_MS,
    claim,
    claim_one,
    error_of,
    get_run,
    start,
    task_record,
    transition,
    until_waiting,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import pytest

    from aiki_server._storage._database import Row, Tx
    from server_api import Harness


room = {"worker_id": "worker-2", "runs": [], "max_dry_runs": 10}
"""A directives poll of worker-2, which holds no run and has room for dry-run jobs."""


async def migrate(h: Harness, **fields: Any) -> dict[str, Any]:
    """Migrate runs of `w` from version 1 to 2; the answer, which must be a 200."""
    body = {"workflow": "w", "from_version": "1", "to_version": "2", **fields}
    r = await h.client.post("/migrations", json=body)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def dry_run(answers: list[dict[str, Any]], h: Harness, **fields: Any) -> None:
    """A dry run of `w` from version 1 to 2 (in a task group); its answer, into `answers`."""
    answers.append(await migrate(h, dry_run=True, **fields))


async def test_runs_that_cannot_move_take_no_place_in_a_page(harness: Harness) -> None:
    h = harness
    await claim(h.client, version="2", worker_id="worker-2")  # version 2 is known
    runs = [await start(h.client, input=n) for n in range(4)]
    running = await claim(h.client, max_runs=2)  # the two oldest run on a worker
    assert {r["run"]["id"] for r in running} == {runs[0]["id"], runs[1]["id"]}

    first = await migrate(h, limit=1)
    assert [r["id"] for r in first["migrated"]] == [runs[2]["id"]]
    assert first["has_more"] is True  # one queued run is still on version 1
    assert {s["run_id"] for s in first["skipped"]} == {runs[0]["id"], runs[1]["id"]}

    second = await migrate(h, limit=1)
    assert [r["id"] for r in second["migrated"]] == [runs[3]["id"]]
    assert second["has_more"] is False


async def test_runs_named_by_id_move_a_page_at_a_time(harness: Harness) -> None:
    h = harness
    await claim(h.client, version="2", worker_id="worker-2")
    ids = [(await start(h.client, input=n))["id"] for n in range(4)]

    first = await migrate(h, filter={"run_ids": ids}, limit=2)
    assert [r["id"] for r in first["migrated"]] == ids[:2]
    assert first["has_more"] is True
    rest = await migrate(h, filter={"run_ids": ids[2:]}, limit=2)
    assert [r["id"] for r in rest["migrated"]] == ids[2:]
    assert rest["has_more"] is False


async def test_a_run_cleaning_up_is_skipped_as_such(harness: Harness) -> None:
    h = harness
    await claim(h.client, version="2", worker_id="worker-2")
    run = await start(h.client)
    await claim(h.client)
    r = await h.client.post(f"/runs/{run['id']}/cancel", json={})
    assert r.json()["status"] == "cleaning_up"

    answer = await migrate(h)
    assert answer["migrated"] == []
    [skipped] = answer["skipped"]
    assert skipped["status"] == "cleaning_up"
    assert "cleaning up" in skipped["reason"]


# -- dry runs ------------------------------------------------------------------------------


async def sleeping_run(h: Harness) -> dict[str, Any]:
    """A run of version 1 that recorded task `charge` and sleeps; its detail."""
    run = await start(h.client, input="o-1")
    revision = (await claim_one(h.client))["run"]["revision"]  # worker-1 serves version 1
    r = await h.client.post(f"/runs/{run['id']}/tasks", json=task_record(revision))
    assert r.status_code == 200, r.text
    sleep = {"kind": "sleep", "name": "nap", "occurrence": 0, "wake_at": FAR_FUTURE}
    r = await transition(h.client, run["id"], revision, {"kind": "suspend", "waits": [sleep]})
    assert r.status_code == 200, r.text
    return await get_run(h.client, run["id"])


def report_of(run_id: str, **fields: Any) -> dict[str, Any]:
    """A report of the replay of `run_id` on version 2 (reused `charge`, then a wait)."""
    call = {"name": "charge", "address": "charge:1", "occurrence": 0}
    return {
        "run_id": run_id,
        "version": "2",
        "outcome": "waits",
        "reused": [call],
        "stopped_at": "the run would wait (sleep), every call before on record",
        **fields,
    }


async def idle_poll(h: Harness, worker_id: str = "worker-2") -> dict[str, Any]:
    """The directives poll of a worker that holds no run; its answer."""
    poll = {"worker_id": worker_id, "runs": [], "wait": 10_000, "max_dry_runs": 10}
    r = await h.client.post("/directives", json=poll)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def test_a_dry_run_is_handed_to_an_idle_worker_and_answered_with_its_report(
    harness: Harness,
) -> None:
    h = harness
    await claim(h.client, version="2", worker_id="worker-2")  # serves version 2, holds nothing
    run = await sleeping_run(h)
    answers: list[dict[str, Any]] = []

    async with anyio.create_task_group() as tg:
        # the worker's poll is open first, and holds no run: the dry run wakes it
        polled: list[dict[str, Any]] = []
        heard = anyio.Event()

        async def poll() -> None:
            polled.append(await idle_poll(h))
            heard.set()

        tg.start_soon(poll)
        await until_waiting(h, 1)
        tg.start_soon(partial(dry_run, answers, h, wait=10_000))
        with anyio.fail_after(10):
            await heard.wait()
        assert polled[0]["runs"] == []
        [job] = polled[0]["dry_runs"]
        # what a claim of the run carries, on the version to replay
        assert job["run"]["run"]["id"] == run["id"]
        assert job["run"]["run"]["version"] == "2"
        assert job["run"]["input"] == "o-1"
        assert [t["name"] for t in job["run"]["tasks"]] == ["charge"]
        assert [s["name"] for s in job["run"]["sleeps"]] == ["nap"]
        # a poll that says it holds the job is not handed it again (nor answered at once)
        again = {**room, "wait": 0, "dry_runs": [job["job_id"]]}
        r = await h.client.post("/directives", json=again)
        assert r.json() == {"runs": [], "dry_runs": []}

        answer = {"worker_id": "worker-2", "report": report_of(run["id"])}
        r = await h.client.post(f"/dry-runs/{job['job_id']}/report", json=answer)
        assert r.status_code == 200, r.text
        assert r.json() == {"job_id": job["job_id"], "run_id": run["id"]}

    [answered] = answers
    assert answered["migrated"] == []
    assert answered["not_replayed"] == []
    assert answered["dry_runs"] == [report_of(run["id"], would_run=None, not_reused=[])]
    after = await get_run(h.client, run["id"])
    for field in ("revision", "status", "version", "tasks", "sleeps", "history"):
        assert after[field] == run[field], field
    # the request took its job rows along: a late report finds no job
    late = await h.client.post(f"/dry-runs/{job['job_id']}/report", json=answer)
    details = error_of(late, 404, "not_found")
    assert details["resource"] == "dry-run job"


async def test_bad_dry_run_reports_are_refused_and_change_nothing(harness: Harness) -> None:
    h = harness
    await claim(h.client, version="2", worker_id="worker-2")
    run = await sleeping_run(h)
    other = await start(h.client)
    answers: list[dict[str, Any]] = []

    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(dry_run, answers, h, filter={"run_ids": [run["id"]]}, wait=10_000))
        [job] = (await idle_poll(h))["dry_runs"]
        report = f"/dry-runs/{job['job_id']}/report"

        async def refused(path: str, body: Any, status: int, code: str) -> None:
            error_of(await h.client.post(path, json=body), status, code)

        good = report_of(run["id"])
        # malformed: neither a report nor a failure, both, a report that is not one
        await refused(report, {"worker_id": "worker-2"}, 422, "payload_validation")
        both = {"worker_id": "worker-2", "report": good, "failure": "x"}
        await refused(report, both, 422, "payload_validation")
        await refused(
            report, {"worker_id": "worker-2", "report": {"run_id": 1}}, 422, "payload_validation"
        )
        await refused(report, [1, 2], 422, "payload_validation")
        # the report of another run, or of another version, than the job's
        wrong_run = {"worker_id": "worker-2", "report": report_of(other["id"])}
        await refused(report, wrong_run, 422, "payload_validation")
        wrong_version = {"worker_id": "worker-2", "report": {**good, "version": "1"}}
        await refused(report, wrong_version, 422, "payload_validation")
        # a job that does not exist, or is another worker's
        mine = {"worker_id": "worker-2", "report": good}
        await refused("/dry-runs/01J0000000000000000000000X/report", mine, 404, "not_found")
        await refused(report, {"worker_id": "worker-9", "report": good}, 404, "not_found")

        # none of it answered the job: the worker is handed it again, then reports a failure
        again = await h.client.post("/directives", json=room)
        assert [j["job_id"] for j in again.json()["dry_runs"]] == [job["job_id"]]
        failed = {"worker_id": "worker-2", "failure": "the replay raised KeyError: 'x'"}
        assert (await h.client.post(report, json=failed)).status_code == 200

    [answered] = answers
    assert answered["dry_runs"] == []
    [not_replayed] = answered["not_replayed"]
    assert not_replayed["run_id"] == run["id"]
    assert "the replay raised KeyError: 'x'" in not_replayed["reason"]
    assert (await get_run(h.client, run["id"]))["revision"] == run["revision"]


async def test_a_dry_run_no_worker_answers_lists_its_runs_when_the_wait_runs_out(
    harness: Harness,
) -> None:
    h = harness
    await claim(h.client, version="2", worker_id="worker-2")
    run = await sleeping_run(h)
    answers: list[dict[str, Any]] = []

    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(dry_run, answers, h, wait=200))
        [job] = (await idle_poll(h))["dry_runs"]  # handed out, never reported
        h.clock.advance(1_000)  # past the request's wait

    [answered] = answers
    assert answered["dry_runs"] == []
    [not_replayed] = answered["not_replayed"]
    assert not_replayed["run_id"] == run["id"]
    assert "did not report its replay" in not_replayed["reason"]
    assert job["job_id"]


async def test_a_dry_run_without_a_polling_worker_of_the_version_is_a_409(
    harness: Harness,
) -> None:
    h = harness
    run = await sleeping_run(h)
    await claim(h.client, version="2", worker_id="worker-2")
    h.clock.advance(10 * 60 * 1000)  # worker-2 is no longer live (nor worker-1)
    body = {"workflow": "w", "from_version": "1", "to_version": "2", "dry_run": True}

    r = await h.client.post("/migrations", json=body)

    details = error_of(r, 409, "no_dry_run_worker")
    assert details == {"workflow": "w", "version": "2"}
    assert "aiki_worker.dry_run" in r.json()["error"]["message"]
    assert (await get_run(h.client, run["id"]))["revision"] == run["revision"]


async def test_the_job_rows_of_a_dry_run_that_died_expire_and_are_swept(harness: Harness) -> None:
    h = harness
    run = await sleeping_run(h)
    await claim(h.client, version="2", worker_id="worker-2")

    async def orphan(tx: Tx) -> None:  # as a request that crashed after it handed the job
        await tx.execute(
            "INSERT INTO dry_run_jobs (id, namespace, request_id, worker_id, run_id, version,"
            " created_at, expires_at) VALUES ($1, 'default', 'r', 'worker-2', $2, '2', $3, $4)",
            "01J0000000000000000000000J",
            run["id"],
            START_MS,
            START_MS + 1_000,
        )

    async def jobs(tx: Tx) -> int:
        return len(await tx.fetch("SELECT id FROM dry_run_jobs"))

    db = h.app.state.db
    await db.write(orphan)
    polled = await h.client.post("/directives", json=room)
    assert [j["job_id"] for j in polled.json()["dry_runs"]] == ["01J0000000000000000000000J"]
    h.clock.advance(2_000)
    expired = {**room, "wait": 0}
    assert (await h.client.post("/directives", json=expired)).json()["dry_runs"] == []
    assert await db.write(jobs) == 1

    await h.app.state.retention.sweep()

    assert await db.write(jobs) == 0


async def test_a_run_that_cannot_be_handed_out_holds_up_no_other_dry_run_job(
    harness: Harness,
) -> None:
    h = harness
    await claim(h.client, version="2", worker_id="worker-2")
    bad = await sleeping_run(h)
    good = await sleeping_run(h)

    async def garble(tx: Tx) -> None:  # a row the server cannot make a claim of
        await tx.execute("UPDATE runs SET input = '{not json' WHERE id = $1", bad["id"])

    await h.app.state.db.write(garble)
    answers: list[dict[str, Any]] = []

    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(dry_run, answers, h, wait=10_000))
        [job] = (await idle_poll(h))["dry_runs"]  # the good run's alone, and the poll serves on
        assert job["run"]["run"]["id"] == good["id"]
        answer = {"worker_id": "worker-2", "report": report_of(good["id"])}
        r = await h.client.post(f"/dry-runs/{job['job_id']}/report", json=answer)
        assert r.status_code == 200, r.text
        h.clock.advance(20_000)  # past the wait: the bad run's job is never answered

    [answered] = answers
    assert [r["run_id"] for r in answered["dry_runs"]] == [good["id"]]
    assert [n["run_id"] for n in answered["not_replayed"]] == [bad["id"]]


async def test_an_unreadable_stored_answer_lists_its_run_as_not_replayed(
    harness: Harness,
) -> None:
    h = harness
    await claim(h.client, version="2", worker_id="worker-2")
    run = await sleeping_run(h)
    answers: list[dict[str, Any]] = []

    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(dry_run, answers, h, wait=200))
        [job] = (await idle_poll(h))["dry_runs"]

        async def garble(tx: Tx) -> None:  # an answer no reader of this server can parse
            await tx.execute("UPDATE dry_run_jobs SET answer = '{' WHERE id = $1", job["job_id"])

        await h.app.state.db.write(garble)

    [answered] = answers
    assert answered["dry_runs"] == []
    [not_replayed] = answered["not_replayed"]
    assert not_replayed["run_id"] == run["id"]
    assert "unreadable" in not_replayed["reason"]


async def test_a_dry_run_reads_each_stored_answer_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each report wakes the request, which reads the stored answers only once all came.

    An answer may be a report of thousands of calls: read anew on each report, a dry
    run of many such runs read a multiple of them all.
    """
    h = harness
    await claim(h.client, version="2", worker_id="worker-2")
    runs = [await sleeping_run(h) for _ in range(3)]
    looks: list[anyio.Event] = [anyio.Event()]
    answers_read: list[str] = []
    for cls in (PostgresTx, SqliteTx, _ThreadedSqliteTx):
        if "fetch" in vars(cls):
            monkeypatch.setattr(cls, "fetch", _noting(cls.fetch, looks, answers_read))
    answers: list[dict[str, Any]] = []

    async def dry_run() -> None:
        body = {"workflow": "w", "from_version": "1", "to_version": "2", "dry_run": True}
        answers.append(await migrate(h, **body, wait=10_000))

    async with anyio.create_task_group() as tg:
        tg.start_soon(dry_run)
        jobs = (await idle_poll(h))["dry_runs"]
        assert len(jobs) == len(runs)
        for job in jobs:
            looks.append(anyio.Event())
            answer = {"worker_id": "worker-2", "report": report_of(job["run"]["run"]["id"])}
            r = await h.client.post(f"/dry-runs/{job['job_id']}/report", json=answer)
            assert r.status_code == 200, r.text
            with anyio.fail_after(10):
                await looks[-1].wait()  # the request woke, and looked

    [answered] = answers
    assert sorted(r["run_id"] for r in answered["dry_runs"]) == sorted(r["id"] for r in runs)
    assert len(answers_read) == len(runs)


async def test_a_poll_is_handed_no_more_dry_run_jobs_than_its_room(harness: Harness) -> None:
    h = harness
    await claim(h.client, version="2", worker_id="worker-2")
    runs = [await sleeping_run(h) for _ in range(2)]
    answers: list[dict[str, Any]] = []

    async def dry_run() -> None:
        body = {"workflow": "w", "from_version": "1", "to_version": "2", "dry_run": True}
        answers.append(await migrate(h, **body, wait=10_000))

    async with anyio.create_task_group() as tg:
        tg.start_soon(dry_run)
        poll = {"worker_id": "worker-2", "runs": [], "wait": 10_000, "max_dry_runs": 1}
        r = await h.client.post("/directives", json=poll)
        [first] = r.json()["dry_runs"]
        # no room: the poll is handed none, and waits (here: not at all) for directives;
        # nor is a poll that does not say its room (a worker that replays no dry run)
        for full in ({**poll, "max_dry_runs": 0}, {"worker_id": "worker-2", "runs": []}):
            r = await h.client.post("/directives", json={**full, "wait": 0})
            assert r.json() == {"runs": [], "dry_runs": []}
        r = await h.client.post("/directives", json={**poll, "dry_runs": [first["job_id"]]})
        [second] = r.json()["dry_runs"]
        for job in (first, second):
            answer = {"worker_id": "worker-2", "report": report_of(job["run"]["run"]["id"])}
            r = await h.client.post(f"/dry-runs/{job['job_id']}/report", json=answer)
            assert r.status_code == 200, r.text

    [answered] = answers
    assert sorted(r["run_id"] for r in answered["dry_runs"]) == sorted(r["id"] for r in runs)
    over = await h.client.post("/directives", json={**poll, "max_dry_runs": 11})
    error_of(over, 422, "payload_validation")


def _noting(
    fetch: Callable[..., Awaitable[list[Row]]], looks: list[anyio.Event], answers_read: list[str]
) -> Callable[..., Awaitable[list[Row]]]:
    """`fetch`, telling the request's looks at its jobs (`looks[-1]`), and noting each
    stored answer it reads."""

    async def noted(tx: Tx, sql: str, *args: Any) -> list[Row]:
        rows = await fetch(tx, sql, *args)
        if "FROM dry_run_jobs WHERE request_id" in sql:
            looks[-1].set()
            answers_read.extend(row["answer"] for row in rows if row.get("answer") is not None)
        return rows

    return noted
