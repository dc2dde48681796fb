"""Unserved versions and migrating in-flight runs to a new version, through the harness.

An embedded server (`aiki_server.testing`) on SQLite and on PostgreSQL, a client over
httpx's ASGI transport and a worker of versions 1.0.0 and 1.1.0 in the test's
process: each task body notes its call in `CALLS`, so a test sees what ran, and how
often. Version 2.0.0 is never served. A dry run replays either on the test's own
copy of the new version's code (`aiki_worker.dry_run`), or, asked through the client,
on the worker, which serves 1.0.1 (1.0.0's code again) and 1.2.0 (whose replay raises)
too.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

from aiki_client import Client
from aiki_core import (
    ConflictError,
    ConsoleLogger,
    IllegalTransitionError,
    LogLevel,
    NoDryRunWorkerError,
    NonRetryableError,
    NotFoundError,
    PayloadValidationError,
    RunStatus,
    TaskFailedError,
)
from aiki_crypto import AesGcmCodec, KeyRing
from aiki_task import task
from aiki_worker import Worker, dry_run
from aiki_workflow import WorkflowRun, workflow

if TYPE_CHECKING:
    from aiki_core.sdk import ExecutableVersion, RunExecution
    from aiki_core.wire import RunAction, RunDetail
    from aiki_server.testing import EmbeddedServer

WAIT = timedelta(seconds=20)
QUIET = ConsoleLogger(LogLevel.ERROR)
CALLS: list[str] = []
HELD: list[anyio.Event] = []
"""Set by `hold` once it runs."""
RELEASE: list[anyio.Event] = []
"""`hold` returns once the test sets it."""


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    HELD[:] = [anyio.Event()]
    RELEASE[:] = [anyio.Event()]


@task("mv-reserve")
async def reserve(order: str) -> str:
    """Reserve stock (noted: a test counts the calls)."""
    CALLS.append(f"reserve {order}")
    return order.upper()


@task("mv-ship")
async def ship(label: str) -> str:
    """Ship under a label (noted)."""
    CALLS.append(f"ship {label}")
    return f"shipped {label}"


@task("mv-hold")
async def hold(_: None) -> None:
    """Block until the test releases it: the run stays `running`."""
    HELD[0].set()
    await RELEASE[0].wait()


shipping = workflow("mv-shipping")


@shipping.v("1.0.0")
async def shipping_v1(run: WorkflowRun, order: str) -> str:
    """Reserve, ship, then wait a day for the parcel to settle."""
    label = await reserve.start(run, order)
    shipped = await ship.start(run, label)
    await run.sleep("settle", timedelta(days=1))
    return shipped


@shipping.v("1.1.0")
async def shipping_v1_1(run: WorkflowRun, order: str) -> str:
    """The same reservation; the label now says the carrier, so shipping changes."""
    label = await reserve.start(run, order)
    shipped = await ship.start(run, f"{label} via dhl")
    await run.sleep("settle", timedelta(days=1))
    return shipped


@shipping.v("1.0.1")
async def shipping_v1_0_1(run: WorkflowRun, order: str) -> str:
    """1.0.0's code again."""
    label = await reserve.start(run, order)
    shipped = await ship.start(run, label)
    await run.sleep("settle", timedelta(days=1))
    return shipped


class Exploding:
    """Version 1.2.0 of `mv-shipping`, whose execution raises outside the workflow's code."""

    workflow = "mv-shipping"
    version = "1.2.0"

    async def execute(self, execution: RunExecution) -> RunAction:
        raise RuntimeError("the replay machinery broke")


@shipping.v("2.0.0")
async def shipping_v2(run: WorkflowRun, order: str) -> str:
    """A version no worker of this module serves."""
    return order


@task("mv-refuse")
async def refuse(order: str) -> str:
    """Fail for good (noted): a failed record a replay takes up as it takes a result."""
    CALLS.append(f"refuse {order}")
    raise NonRetryableError("out of stock")


refusing = workflow("mv-refusing")


@refusing.v("1.0.0")
async def refusing_v1(run: WorkflowRun, order: str) -> str:
    """Try a task that fails, then sleep a day."""
    try:
        await refuse.start(run, order)
    except TaskFailedError:
        pass
    await run.sleep("later", timedelta(days=1))
    return "gave up"


@refusing.v("1.0.1")
async def refusing_v1_0_1(run: WorkflowRun, order: str) -> str:
    """1.0.0's code again."""
    try:
        await refuse.start(run, order)
    except TaskFailedError:
        pass
    await run.sleep("later", timedelta(days=1))
    return "gave up"


holding = workflow("mv-holding")


@holding.v("1.0.0")
async def holding_v1(run: WorkflowRun, _: None) -> None:
    """Run a task that blocks until the test releases it."""
    await hold.start(run, None)


@holding.v("1.1.0")
async def holding_v1_1(run: WorkflowRun, _: None) -> None:
    """The same."""
    await hold.start(run, None)


@pytest.fixture
def workflows() -> list[ExecutableVersion]:
    """What the root conftest's `worker` fixture runs: not 2.0.0."""
    return [
        shipping_v1,
        shipping_v1_1,
        shipping_v1_0_1,
        Exploding(),
        refusing_v1,
        refusing_v1_0_1,
        holding_v1,
        holding_v1_1,
    ]


def unchanged(before: RunDetail, after: RunDetail) -> None:
    """Nothing of the run was written: its revision, status, version and records."""
    assert after.revision == before.revision
    assert after.status is before.status
    assert after.version == before.version
    assert after.tasks == before.tasks
    assert after.sleeps == before.sleeps
    assert after.history == before.history


@pytest.mark.usefixtures("worker")
async def test_a_sleeping_run_migrated_to_a_new_version_reuses_what_it_still_calls(
    server: EmbeddedServer, client: Client
) -> None:
    handle = await shipping_v1.start(client, "o-1")
    await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
    sleeping = await handle.detail()

    # a dry run first: 1.1.0 reuses the reservation, and would ship anew
    report = await dry_run(shipping_v1_1, sleeping)
    assert report.outcome == "runs_a_task"
    assert report.would_run is not None
    assert report.would_run.name == "mv-ship"
    assert [c.name for c in report.reused] == ["mv-reserve"]
    assert [c.name for c in report.not_reused] == ["mv-ship"]
    same = await dry_run(shipping_v1, sleeping)  # its own version: all reused, then the sleep
    assert (same.outcome, same.would_run, same.not_reused) == ("waits", None, [])
    assert [c.name for c in same.reused] == ["mv-reserve", "mv-ship"]
    assert CALLS == ["reserve o-1", "ship O-1"]  # nothing ran
    assert (await handle.detail()).history == sleeping.history  # nothing was written

    migrated = await client.migrate_runs("mv-shipping", "1.0.0", "1.1.0")

    assert [r.id for r in migrated.migrated] == [handle.id]
    assert migrated.migrated[0].version == "1.1.0"
    assert migrated.migrated[0].status is RunStatus.SLEEPING
    assert migrated.to_version_served
    assert migrated.warning is None
    detail = await handle.detail()
    assert detail.sleeps[0].wake_at == sleeping.sleeps[0].wake_at  # keeps its wake-up
    assert detail.revision == sleeping.revision + 1  # an old claim is fenced
    assert detail.history[-1].reason == "migrated from version '1.0.0' to '1.1.0'"
    assert detail.pending_reason is None  # 1.1.0 is served

    server.advance(timedelta(days=1))
    assert await handle.result(timeout=WAIT) == "shipped O-1 via dhl"
    # the reservation is not made again; the changed shipping call runs
    assert CALLS == ["reserve o-1", "ship O-1", "ship O-1 via dhl"]
    assert (await handle.detail()).version == "1.1.0"


@pytest.mark.usefixtures("worker")
async def test_unserved_runs_are_listed_and_say_why_until_migrated(
    server: EmbeddedServer, client: Client
) -> None:
    served = await shipping_v1.start(client, "o-served")
    await served.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
    stranded = await shipping_v2.start(client, "o-stranded")

    page = await client.list_runs(unserved=True)

    assert [r.id for r in page.runs] == [stranded.id]
    assert (await client.list_runs(unserved=True, version="1.0.0")).runs == []
    reason = (await stranded.detail()).pending_reason
    assert reason is not None
    assert "no connected worker serves workflow 'mv-shipping' version '2.0.0'" in reason

    # a sleeping run moved to a version nothing serves: allowed, and it says so
    moved = await client.migrate_runs("mv-shipping", "1.0.0", "2.0.0", run_ids=[served.id])
    assert not moved.to_version_served
    assert moved.warning is not None
    assert "'2.0.0'" in moved.warning
    reason = (await served.detail()).pending_reason
    assert reason is not None
    assert "version '2.0.0'" in reason
    assert "next due" in reason
    listed = {r.id for r in (await client.list_runs(unserved=True)).runs}
    assert listed == {served.id, stranded.id}

    # the operator acts: both go to a served version, and complete there
    back = await client.migrate_runs("mv-shipping", "2.0.0", "1.1.0")
    assert {r.id for r in back.migrated} == {served.id, stranded.id}
    assert (await client.list_runs(unserved=True)).runs == []
    await stranded.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)  # it ran at once
    server.advance(timedelta(days=1))
    assert await stranded.result(timeout=WAIT) == "shipped O-STRANDED via dhl"
    assert await served.result(timeout=WAIT) == "shipped O-SERVED via dhl"


@pytest.mark.usefixtures("worker")
async def test_bad_migrations_are_refused_whole(server: EmbeddedServer, client: Client) -> None:
    ended = await shipping_v1.start(client, "o-ended")
    await ended.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
    await ended.cancel(reason="done with it")
    waiting = await shipping_v1.start(client, "o-waiting")
    await waiting.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)

    with pytest.raises(NotFoundError):
        await client.migrate_runs("mv-shipping", "1.0.0", "9.9.9")
    with pytest.raises(NotFoundError):
        await client.migrate_runs("mv-shipping", "0.1.0", "1.1.0")
    with pytest.raises(IllegalTransitionError):
        await client.migrate_runs("mv-shipping", "1.0.0", "1.1.0", run_ids=[waiting.id, ended.id])
    with pytest.raises(ConflictError):
        await client.migrate_runs("mv-shipping", "1.0.0", "1.0.0")
    with pytest.raises(PayloadValidationError):
        await client.migrate_runs("mv-shipping", "1.0.0", "1.1.0", limit=0)
    transport = httpx.ASGITransport(app=server.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://aiki.test") as raw:
        same = await raw.post(
            "/api/v1/migrations",
            json={"workflow": "mv-shipping", "from_version": "1.0.0", "to_version": "1.0.0"},
        )
    assert same.status_code == 409, same.text

    # nothing moved: the waiting run named beside the ended one is still on 1.0.0
    assert (await waiting.detail()).version == "1.0.0"
    assert (await ended.detail()).version == "1.0.0"
    without_ids = await client.migrate_runs("mv-shipping", "1.0.0", "1.1.0")
    assert [r.id for r in without_ids.migrated] == [waiting.id]  # the ended one is not matched


@pytest.mark.usefixtures("worker")
async def test_a_running_run_is_skipped_or_refused(client: Client) -> None:
    running = await holding_v1.start(client, None)
    with anyio.fail_after(WAIT.total_seconds()):
        await HELD[0].wait()  # its task is under way

    skipped = await client.migrate_runs("mv-holding", "1.0.0", "1.1.0")
    assert skipped.migrated == []
    assert [(s.run_id, s.status) for s in skipped.skipped] == [(running.id, RunStatus.RUNNING)]
    assert "pause it" in skipped.skipped[0].reason
    with pytest.raises(IllegalTransitionError):
        await client.migrate_runs("mv-holding", "1.0.0", "1.1.0", run_ids=[running.id])

    RELEASE[0].set()
    await running.result(timeout=WAIT)
    assert (await running.detail()).version == "1.0.0"


@pytest.mark.usefixtures("worker")
async def test_a_dry_run_through_the_client_is_replayed_on_the_worker(
    server: EmbeddedServer, client: Client
) -> None:
    handle = await shipping_v1.start(client, "o-1")
    await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
    sleeping = await handle.detail()
    [worker] = (await client.list_workers()).workers
    assert worker.running == 0  # an idle worker: it holds no run, and is asked all the same

    answer = await client.migrate_runs("mv-shipping", "1.0.0", "1.1.0", dry_run=True, wait=WAIT)

    assert answer.migrated == []
    assert answer.not_replayed == []
    [report] = answer.dry_runs
    assert (report.run_id, report.version, report.outcome) == (handle.id, "1.1.0", "runs_a_task")
    assert [c.name for c in report.reused] == ["mv-reserve"]
    assert [c.name for c in report.not_reused] == ["mv-ship"]
    assert report.would_run is not None
    assert report.would_run.name == "mv-ship"
    # the same report as the local dry run of the same code
    assert report == await dry_run(shipping_v1_1, sleeping)
    assert CALLS == ["reserve o-1", "ship O-1"]  # nothing ran
    unchanged(sleeping, await handle.detail())

    migrated = await client.migrate_runs("mv-shipping", "1.0.0", "1.1.0")
    assert [r.id for r in migrated.migrated] == [handle.id]
    server.advance(timedelta(days=1))
    assert await handle.result(timeout=WAIT) == "shipped O-1 via dhl"
    assert CALLS == ["reserve o-1", "ship O-1", "ship O-1 via dhl"]


@pytest.mark.usefixtures("worker")
async def test_a_dry_run_with_no_polling_worker_of_the_version_is_refused(client: Client) -> None:
    handle = await shipping_v1.start(client, "o-2")
    await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
    await shipping_v2.start(client, "o-stranded")  # 2.0.0 is known, but no worker serves it
    before = await handle.detail()

    with pytest.raises(NoDryRunWorkerError) as unserved:
        await client.migrate_runs("mv-shipping", "1.0.0", "2.0.0", dry_run=True)
    assert isinstance(unserved.value, ConflictError)
    assert (unserved.value.workflow, unserved.value.version) == ("mv-shipping", "2.0.0")
    assert "aiki_worker.dry_run" in unserved.value.message
    unchanged(before, await handle.detail())


@pytest.mark.usefixtures("worker")
async def test_a_replay_that_raises_is_reported_and_the_worker_goes_on(client: Client) -> None:
    handle = await shipping_v1.start(client, "o-3")
    await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
    sleeping = await handle.detail()

    broken = await client.migrate_runs("mv-shipping", "1.0.0", "1.2.0", dry_run=True, wait=WAIT)

    assert broken.dry_runs == []
    [failed] = broken.not_replayed
    assert failed.run_id == handle.id
    assert "RuntimeError: the replay machinery broke" in failed.reason
    unchanged(sleeping, await handle.detail())
    # the worker lives on: the next dry run is answered
    fine = await client.migrate_runs("mv-shipping", "1.0.0", "1.0.1", dry_run=True, wait=WAIT)
    assert [(r.run_id, r.outcome) for r in fine.dry_runs] == [(handle.id, "waits")]
    unchanged(sleeping, await handle.detail())


async def test_a_sealed_run_is_dry_run_through_the_workers_codec(server: EmbeddedServer) -> None:
    transport = httpx.ASGITransport(app=server.app)
    codec = AesGcmCodec(KeyRing([("k1", KeyRing.generate_key())]))
    async with (
        Client("http://aiki.test", transport=transport, codec=codec, logger=QUIET) as sealing,
        Worker(sealing, [shipping_v1, shipping_v1_0_1], logger=QUIET),
    ):
        handle = await shipping_v1.start(sealing, "o-4")
        await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
        before = await handle.detail()
        async with Client("http://aiki.test", transport=transport, logger=QUIET) as operator:
            # the operator's client holds no key: the worker opens the records with its own
            answer = await operator.migrate_runs(
                "mv-shipping", "1.0.0", "1.0.1", dry_run=True, wait=WAIT
            )

        [report] = answer.dry_runs
        # the reservation's sealed result opened as on a claim: the shipping label matches
        assert (report.outcome, report.would_run, report.not_reused) == ("waits", None, [])
        assert [c.name for c in report.reused] == ["mv-reserve", "mv-ship"]
        unchanged(before, await handle.detail())


@pytest.mark.usefixtures("worker")
async def test_a_failed_record_is_reused_by_the_workers_dry_run(client: Client) -> None:
    handle = await refusing_v1.start(client, "o-5")
    await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
    before = await handle.detail()

    answer = await client.migrate_runs("mv-refusing", "1.0.0", "1.0.1", dry_run=True, wait=WAIT)

    [report] = answer.dry_runs
    # the failure on record is what the code saw again: reused, and nothing would run
    assert (report.outcome, report.would_run, report.not_reused) == ("waits", None, [])
    assert [c.name for c in report.reused] == ["mv-refuse"]
    assert CALLS == ["refuse o-5"]
    unchanged(before, await handle.detail())
