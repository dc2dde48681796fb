"""Replay across executions: determinism helpers, divergence notices, workflow retries,
continue-as-new and the per-run task limit, through the harness.

An embedded server (`aiki_server.testing`) on SQLite and on PostgreSQL, a client over
httpx's ASGI transport and a worker, all in the test's process: each task body notes
its call in `CALLS`, so a test sees what ran, and how often.
"""

from __future__ import annotations

import io
import time
from datetime import timedelta
from itertools import pairwise
from typing import TYPE_CHECKING

import httpx
import pytest

from aiki_client import Client
from aiki_core import ConsoleLogger, LogLevel, RetryPolicy, RunStatus, WorkflowFailedError
from aiki_crypto import AesGcmCodec, KeyRing
from aiki_server import ServerSettings
from aiki_task import task
from aiki_worker import Worker
from aiki_workflow import WorkflowRun, workflow

if TYPE_CHECKING:
    from aiki_core.sdk import ExecutableVersion
    from aiki_server.testing import EmbeddedServer

QUIET = ConsoleLogger(LogLevel.ERROR)
WAIT = timedelta(seconds=20)
CALLS: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()


@task("send-email")
async def send_email(message: dict[str, object]) -> None:
    """Send an email (noted: a test counts them)."""
    CALLS.append(f"email {message['to']} at {message['at']}")


@task("note")
async def note(value: str) -> str:
    """Note a value."""
    CALLS.append(value)
    return value


# -- determinism ---------------------------------------------------------------------------

mailer = workflow("rules-mailer")


@mailer.v("1")
async def mailer_v1(run: WorkflowRun, to: str) -> str:
    """Email with a timestamp drawn by `run.now()`, then sleep a day."""
    sent_at = await run.now()
    await send_email.start(run, {"to": to, "at": sent_at.isoformat()})
    await run.sleep("a-day", timedelta(days=1))
    return sent_at.isoformat()


@mailer.v("2")
async def mailer_v2(run: WorkflowRun, to: str) -> str:
    """The same with `time.time()`: nondeterministic, the email goes again on replay."""
    await send_email.start(run, {"to": to, "at": time.time()})
    await run.sleep("a-day", timedelta(days=1))
    return "sent"


drawer = workflow("rules-drawer")


@drawer.v("1")
async def drawer_v1(run: WorkflowRun, _: None) -> list[str]:
    """Draw an id and a number, note them, sleep, and return them (drawn again on replay)."""
    drawn_id = await run.uuid()
    number = await run.random()
    assert 0 <= number < 1
    await note.start(run, f"{drawn_id} {number}")
    await run.sleep("nap", timedelta(hours=1))
    return [str(drawn_id), repr(number)]


# -- workflow retries ----------------------------------------------------------------------

FLAKY_FAILS: list[int] = [1]
"""How many more calls of `flaky` fail."""


@task("flaky")
async def flaky(what: str) -> str:
    """Fail as often as `FLAKY_FAILS` says, then succeed."""
    CALLS.append(f"flaky {what}")
    if FLAKY_FAILS[0] > 0:
        FLAKY_FAILS[0] -= 1
        raise RuntimeError("flaky failed")
    return f"ok {what}"


retried = workflow("rules-retried")


@retried.v("1", retry=RetryPolicy.fixed(max_attempts=2, delay=timedelta(milliseconds=10)))
async def retried_v1(run: WorkflowRun, what: str) -> str:
    """A task that completes, then one that fails on the run's first attempt."""
    await note.start(run, f"before {what}")
    return await flaky.start(run, what)


# -- continue as new, the task limit -------------------------------------------------------

counter = workflow("rules-counter")


@counter.v("1")
async def counter_v1(run: WorkflowRun, state: list[int]) -> int:
    """Count generations: each adds its number and continues as new, up to 5."""
    generation, total = state
    await note.start(run, f"generation {generation}")
    if generation < 5:
        try:
            run.continue_as_new([generation + 1, total + generation])
        except Exception:
            CALLS.append("swallowed")
    return total + generation


looper = workflow("rules-looper")


@looper.v("1")
async def looper_v1(run: WorkflowRun, count: int) -> int:
    """Call a task `count` times."""
    for n in range(count):
        await note.start(run, f"loop {n}")
    return count


restless = workflow("rules-restless")


@restless.v("1")
async def restless_v1(run: WorkflowRun, n: int) -> int:
    """Continue as new at once."""
    run.continue_as_new(n + 1)


parent = workflow("rules-parent")


@parent.v("1")
async def parent_v1(run: WorkflowRun, _: None) -> str:
    """Start a run that continues as new as a child: a child may not."""
    child = await restless_v1.start_child(run, 1)
    try:
        await child.result()
    except WorkflowFailedError as exc:
        return exc.error.message
    return "completed"


VERSIONS: list[ExecutableVersion] = [
    mailer_v1,
    mailer_v2,
    drawer_v1,
    retried_v1,
    counter_v1,
    looper_v1,
    restless_v1,
    parent_v1,
]


@pytest.fixture
def server_settings() -> ServerSettings:
    """The root conftest's `server` runs with a small task limit."""
    return ServerSettings(max_tasks_per_run=10)


@pytest.fixture
def workflows() -> list[ExecutableVersion]:
    """What the root conftest's `worker` fixture runs: every version here."""
    return VERSIONS


@pytest.mark.usefixtures("worker")
async def test_an_email_stamped_by_run_now_is_sent_once_across_a_sleep(
    server: EmbeddedServer, client: Client
) -> None:
    handle = await mailer_v1.start(client, "ada@example.com")
    await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
    server.advance(timedelta(days=1))

    sent_at = await handle.result(timeout=WAIT)

    assert CALLS == [f"email ada@example.com at {sent_at}"]
    detail = await handle.detail()
    assert detail.notices == []
    assert [t.name for t in detail.tasks] == ["aiki.now", "send-email"]


@pytest.mark.usefixtures("worker")
async def test_an_email_stamped_by_time_time_is_sent_again_and_noticed(
    server: EmbeddedServer, client: Client
) -> None:
    handle = await mailer_v2.start(client, "ada@example.com")
    await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
    server.advance(timedelta(days=1))

    assert await handle.result(timeout=WAIT) == "sent"

    assert len(CALLS) == 2  # the replay's timestamp missed the record
    detail = await handle.detail()
    assert len(detail.notices) == 1
    notice = detail.notices[0]
    assert "replay diverged" in notice.message
    assert "'send-email'" in notice.message
    assert "run.now()" in notice.message
    emails = [t for t in detail.tasks if t.name == "send-email"]
    assert notice.task_id == emails[1].id  # the call the replay made anew


async def test_a_notice_under_an_encrypting_codec_leaves_the_inputs_out(
    server: EmbeddedServer,
) -> None:
    codec = AesGcmCodec(KeyRing([("k1", b"k" * 32)]))
    transport = httpx.ASGITransport(app=server.app)
    lines = io.StringIO()
    logger = ConsoleLogger(LogLevel.WARN, stream=lines)
    async with (
        Client("http://aiki.test", transport=transport, logger=QUIET, codec=codec) as sealed,
        Worker(sealed, VERSIONS, logger=logger),
    ):
        handle = await mailer_v2.start(sealed, "ada@example.com")
        await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
        server.advance(timedelta(days=1))
        assert await handle.result(timeout=WAIT) == "sent"

        (notice,) = (await handle.detail()).notices
    assert "'send-email'" in notice.message
    assert "ada@example.com" not in notice.message  # the server never sees it in clear
    # nor do the worker's logs, often shipped to a third party
    logged = lines.getvalue()
    assert "replay diverged" in logged
    assert "send-email" in logged
    assert "ada@example.com" not in logged


@pytest.mark.usefixtures("worker")
async def test_run_uuid_and_random_replay_the_values_they_drew(
    server: EmbeddedServer, client: Client
) -> None:
    handle = await drawer_v1.start(client, None)
    await handle.wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
    server.advance(timedelta(hours=1))

    drawn_id, number = await handle.result(timeout=WAIT)

    # the replay after the sleep (a new claim) drew nothing new: it got the recorded values,
    # so the task noting them was not called again
    assert CALLS == [f"{drawn_id} {number}"]


@pytest.mark.usefixtures("worker")
async def test_a_workflow_retry_runs_the_failed_task_again(client: Client) -> None:
    FLAKY_FAILS[0] = 1
    handle = await retried_v1.start(client, "x")

    assert await handle.result(timeout=WAIT) == "ok x"

    assert CALLS == ["before x", "flaky x", "flaky x"]  # `note` stayed memoized
    detail = await handle.detail()
    assert detail.attempt == 2
    (flaky_call,) = [t for t in detail.tasks if t.name == "flaky"]
    assert flaky_call.status == "completed"
    assert flaky_call.run_attempt == 2
    assert [(a.attempt, a.status, a.run_attempt) for a in flaky_call.attempts] == [
        (1, "failed", 1),
        (2, "completed", 2),
    ]


@pytest.mark.usefixtures("worker")
async def test_a_workflow_retry_still_fails_when_the_task_fails_again(client: Client) -> None:
    FLAKY_FAILS[0] = 2
    handle = await retried_v1.start(client, "y")

    with pytest.raises(WorkflowFailedError):
        await handle.result(timeout=WAIT)

    assert CALLS == ["before y", "flaky y", "flaky y"]


@pytest.mark.usefixtures("worker")
async def test_continue_as_new_chains_five_runs_to_one_result(client: Client) -> None:
    first = await counter_v1.start(client, [1, 0])

    assert await first.result(timeout=WAIT) == 1 + 2 + 3 + 4 + 5

    assert CALLS == [f"generation {n}" for n in range(1, 6)]  # nothing swallowed it
    chain = [await first.detail()]
    while chain[-1].continued_as is not None:
        chain.append(await client.run_handle(chain[-1].continued_as).detail())
    assert len(chain) == 5
    assert [run.status for run in chain] == [RunStatus.COMPLETED] * 5
    assert chain[0].continued_from is None
    for older, newer in pairwise(chain):
        assert newer.continued_from == older.id
        assert newer.workflow == older.workflow and newer.version == older.version
        assert [t.name for t in newer.tasks] == ["note"]  # a fresh history


@pytest.mark.usefixtures("worker")
async def test_a_child_cannot_continue_as_new(client: Client) -> None:
    handle = await parent_v1.start(client, None)

    message = await handle.result(timeout=WAIT)

    assert "a child cannot continue as new" in message


@pytest.mark.usefixtures("worker")
async def test_a_run_past_the_task_limit_fails_and_the_worker_goes_on(client: Client) -> None:
    too_long = await looper_v1.start(client, 11)

    with pytest.raises(WorkflowFailedError) as failed:
        await too_long.result(timeout=WAIT)
    assert failed.value.error.code == "run_limit_exceeded"
    assert "continue_as_new" in failed.value.error.message

    within = await looper_v1.start(client, 10)
    assert await within.result(timeout=WAIT) == 10
