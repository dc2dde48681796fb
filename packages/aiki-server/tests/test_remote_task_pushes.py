"""Remote task calls against real task endpoints that misbehave.

Each endpoint is a socket of the test's: it reads each push whole, waits a little and
sends the answer it was given, counting what it got. The server's clock is the
test's, so a back-off written on an endpoint's row holds for the whole test.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg
import pytest

from aiki_server.testing import free_port
from server_api import claim, claim_one, get_run, start, transition

if TYPE_CHECKING:
    from anyio.abc import SocketStream, TaskStatus

    from conftest import Harness, HarnessFactory


UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"


def ok(body: bytes) -> bytes:
    """A `200` answer of `body` (JSON)."""
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


class SocketEndpoint:
    """Sends `answer` to every push after `delay` seconds; `pushes` counts them, `answered`
    the answers sent."""

    def __init__(self, answer: bytes, delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.pushes = 0
        self.answered = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"

    async def serve(self, *, task_status: TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
        async with listener:
            task_status.started()
            await listener.serve(self._answer)

    async def _answer(self, stream: SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(body) < length:
                body += await stream.receive()
            self.pushes += 1
            await anyio.sleep(self.delay)
            await stream.send(self.answer)
            self.answered += 1


async def call_task(
    h: Harness, endpoint: SocketEndpoint, calls: int, **options: Any
) -> list[dict[str, Any]]:
    """Register `endpoint` for task `resize`, make `calls` side by side; their answers."""
    async with anyio.create_task_group() as tg:
        await tg.start(endpoint.serve)
        body = {"url": endpoint.url, "tasks": ["resize"], **options}
        created = await h.client.post("/endpoints", json=body)
        assert created.status_code == 201, created.text
        run = await start(h.client)
        held = await claim_one(h.client)
        call = {
            "revision": held["run"]["revision"],
            "name": "resize",
            "address": "resize:1",
            "occurrence": 0,
            "attempt": 1,
            "input": None,
        }
        answers: list[dict[str, Any]] = []

        async def call_once() -> None:
            r = await h.client.post(f"/runs/{run['id']}/remote-tasks", json=call)
            assert r.status_code == 200, r.text
            answers.append(r.json())

        async with anyio.create_task_group() as side_by_side:
            for _ in range(calls):
                side_by_side.start_soon(call_once)
        tg.cancel_scope.cancel()
    return answers


async def failures_of(h: Harness) -> int:
    """The failed pushes counted on the one endpoint."""
    r = await h.client.get("/endpoints")
    (endpoint,) = r.json()["endpoints"]
    failures: int = endpoint["failures"]
    return failures


async def test_calls_waiting_for_a_busy_endpoint_honour_the_back_off_its_failure_wrote(
    make_harness: HarnessFactory,
) -> None:
    # five calls for an endpoint that takes one push at a time: the first push fails and
    # backs the endpoint off. Before, the four waiting calls chose from the endpoints
    # they read before waiting, and pushed one after another to the failing endpoint
    # regardless of its back-off (and of its circuit once five had failed)
    endpoint = SocketEndpoint(UNAVAILABLE, delay=0.3)
    async with make_harness() as h:
        answers = await call_task(h, endpoint, 5, max_in_flight=1)
    assert endpoint.pushes == 1
    assert [a["error"]["code"] for a in answers] == ["server_unavailable"] * 5


async def test_a_result_a_worker_could_record_comes_back_however_large(
    make_harness: HarnessFactory,
) -> None:
    # 1.5 MB is within the server's request limit (2 MiB), so a worker records it from
    # a local task; the push client read at most 1 MiB of an answer, so the same
    # result from a task endpoint was a failed push: retried (the task ran again) and
    # counted against the endpoint, whose circuit then held back its other tasks
    result = "x" * 1_500_000
    endpoint = SocketEndpoint(ok(json.dumps({"status": "completed", "result": result}).encode()))
    async with make_harness() as h:
        (answer,) = await call_task(h, endpoint, 1)
        assert (answer["status"], answer["result"] == result) == ("completed", True)
        assert await failures_of(h) == 0


async def test_an_answer_too_large_to_record_fails_the_attempt_for_good_not_the_endpoint(
    make_harness: HarnessFactory,
) -> None:
    # the endpoint answered: the task's result is what is too large, as it would be
    # from a local task, and trying again would run the task again for the same result
    result = "x" * 3_000_000
    endpoint = SocketEndpoint(ok(json.dumps({"status": "completed", "result": result}).encode()))
    async with make_harness() as h:
        (answer,) = await call_task(h, endpoint, 1)
        assert answer["status"] == "failed"
        error = answer["error"]
        assert (error["code"], error["retryable"]) == ("payload_too_large", False)
        assert await failures_of(h) == 0


async def answered(h: Harness, run_id: str) -> dict[str, Any]:
    """The run once its long remote attempt's outcome is recorded (bounded in wall time)."""
    with anyio.fail_after(10):
        while True:
            run = await get_run(h.client, run_id)
            if run["tasks"] and run["tasks"][0]["status"] != "running":
                return run
            await anyio.sleep(0.05)


async def long_call(h: Harness, endpoint: SocketEndpoint) -> tuple[str, int]:
    """Register `endpoint` for `resize`, call it from a claimed run: a long attempt.

    The run's id and revision (the harness waits 0.1 s for the endpoint's answer).
    """
    body = {"url": endpoint.url, "tasks": ["resize"]}
    assert (await h.client.post("/endpoints", json=body)).status_code == 201
    run = await start(h.client)
    revision: int = (await claim_one(h.client))["run"]["revision"]
    call = {"revision": revision, "name": "resize", "address": "resize:1"}
    call |= {"occurrence": 0, "attempt": 1, "input": None}
    r = await h.client.post(f"/runs/{run['id']}/remote-tasks", json=call)
    assert r.json()["status"] == "pending"
    return run["id"], revision


SHORT_WAIT = {"remote_task_wait": timedelta(milliseconds=100)}


async def test_a_late_answer_leaves_a_workflow_retry_back_off_alone(
    make_harness: HarnessFactory,
) -> None:
    # the run failed (another branch raised) while its long remote attempt was out, and
    # its workflow retries in an hour; the attempt's answer then re-queued the run, as
    # if the run waited for it: the back-off was skipped and the retry ran at once
    endpoint = SocketEndpoint(ok(b'{"status": "completed", "result": 3}'), delay=0.5)
    async with make_harness(**SHORT_WAIT) as h, anyio.create_task_group() as tg:
        await tg.start(endpoint.serve)
        run_id, revision = await long_call(h, endpoint)
        fail: dict[str, Any] = {"kind": "fail", "error": {"type": "OSError", "message": "down"}}
        fail |= {"retry_delay": 3_600_000}
        r = await transition(h.client, run_id, revision, fail)
        assert r.json()["run"]["status"] == "awaiting_retry"

        detail = await answered(h, run_id)

        assert detail["tasks"][0]["status"] == "completed"
        assert detail["status"] == "awaiting_retry"
        assert await claim(h.client) == []
        tg.cancel_scope.cancel()


async def test_a_run_sleeping_beside_a_long_task_says_it_waits_for_the_task(
    make_harness: HarnessFactory,
) -> None:
    # a long task raced against a timeout (a sleep): the run is `sleeping`, and its
    # detail said only that, as the task's endpoint was named for `awaiting_task` alone
    endpoint = SocketEndpoint(ok(b'{"status": "completed", "result": 3}'), delay=30)
    async with make_harness(**SHORT_WAIT) as h, anyio.create_task_group() as tg:
        await tg.start(endpoint.serve)
        run_id, revision = await long_call(h, endpoint)
        waits = [
            {"kind": "task", "address": "resize:1", "occurrence": 0},
            {"kind": "sleep", "name": "timeout", "occurrence": 0, "duration": 60_000},
        ]
        r = await transition(h.client, run_id, revision, {"kind": "suspend", "waits": waits})
        assert r.json()["run"]["status"] == "sleeping"

        detail = await get_run(h.client, run_id)

        assert detail["pending_reason"] == (
            f"waiting for task 'resize' (attempt 1) on endpoint {endpoint.url}"
        )
        tg.cancel_scope.cancel()


async def test_a_late_failure_counts_in_the_run_attempt_that_made_the_call(
    make_harness: HarnessFactory,
) -> None:
    # the answer came after the run failed and went on to its next workflow attempt:
    # recorded under that attempt, the call's failure was that attempt's own, and the
    # next attempt raised it without running the task again, as it does for a call
    # that failed in an earlier attempt (and would have, had the answer come earlier)
    error = {"type": "ValueError", "message": "bad image", "retryable": False}
    answer = json.dumps({"status": "failed", "error": error}).encode()
    endpoint = SocketEndpoint(ok(answer), delay=0.5)
    async with make_harness(**SHORT_WAIT) as h, anyio.create_task_group() as tg:
        await tg.start(endpoint.serve)
        run_id, revision = await long_call(h, endpoint)
        fail: dict[str, Any] = {"kind": "fail", "error": {"type": "OSError", "message": "down"}}
        fail |= {"retry_delay": 3_600_000}
        r = await transition(h.client, run_id, revision, fail)
        assert r.json()["run"]["attempt"] == 2

        detail = await answered(h, run_id)

        (task,) = detail["tasks"]
        assert (task["status"], task["run_attempt"]) == ("failed", 1)
        tg.cancel_scope.cancel()


async def pushes_left(h: Harness) -> int:
    """The long remote attempts the server still pushes (rows of `task_pushes`)."""
    async with h.app.state.db.reader() as tx:
        rows = await tx.fetch("SELECT run_id FROM task_pushes")
    return len(rows)


async def test_a_late_answer_to_an_attempt_its_worker_recorded_is_dropped_not_pushed_again(
    make_harness: HarnessFactory,
) -> None:
    # the worker lost the `pending` answer (a proxy's idle timeout, say): it recorded the
    # attempt as failed and its next attempt completed. The first attempt's answer then
    # could not be recorded (a completed call does not fail), its row stayed, and its
    # lease running out pushed the attempt again, and again, for as long as the run lived
    error = {"type": "ValueError", "message": "bad image", "retryable": False}
    answer = json.dumps({"status": "failed", "error": error}).encode()
    endpoint = SocketEndpoint(ok(answer), delay=0.5)
    async with make_harness(**SHORT_WAIT) as h, anyio.create_task_group() as tg:
        await tg.start(endpoint.serve)
        run_id, revision = await long_call(h, endpoint)
        lost = {"type": "aiki_core.ServerUnavailableError", "message": "lost", "retryable": True}
        call = {"revision": revision, "name": "resize", "address": "resize:1", "occurrence": 0}
        for record in (
            {"attempt": 1, "status": "awaiting_retry", "error": lost, "retry_delay": 0},
            {"attempt": 2, "status": "completed", "result": 7},
        ):
            r = await h.client.post(f"/runs/{run_id}/tasks", json=call | record)
            assert r.status_code == 200, r.text

        with anyio.fail_after(10):  # its answer comes
            while True:
                if not await pushes_left(h):
                    break
                await anyio.sleep(0.05)

        (task,) = (await get_run(h.client, run_id))["tasks"]
        assert (task["status"], task["result"]) == ("completed", 7)
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("end", ["complete", "cancel"])
async def test_a_run_that_ends_drops_its_long_remote_attempt_and_its_late_answer(
    make_harness: HarnessFactory, end: str
) -> None:
    """Its push row goes with the run's end (a completion; a cancel while the run waits
    for the task); the answer that comes later finds no row and changes nothing."""
    endpoint = SocketEndpoint(ok(b'{"status": "completed", "result": 3}'), delay=0.5)
    async with make_harness(**SHORT_WAIT) as h, anyio.create_task_group() as tg:
        await tg.start(endpoint.serve)
        run_id, revision = await long_call(h, endpoint)
        assert await pushes_left(h) == 1
        if end == "complete":
            r = await transition(h.client, run_id, revision, {"kind": "complete", "result": 1})
        else:
            waits = [{"kind": "task", "address": "resize:1", "occurrence": 0}]
            r = await transition(h.client, run_id, revision, {"kind": "suspend", "waits": waits})
            assert r.json()["run"]["status"] == "awaiting_task", r.text
            r = await h.client.post(f"/runs/{run_id}/cancel", json={"reason": "enough"})
        assert r.status_code == 200, r.text
        ended = await get_run(h.client, run_id)

        assert await pushes_left(h) == 0
        with anyio.fail_after(10):
            while not endpoint.answered:  # noqa: ASYNC110 - a socket server's counter
                await anyio.sleep(0.05)
        await anyio.sleep(0.3)  # the server reads the answer meanwhile
        after = await get_run(h.client, run_id)
        assert (after["status"], after["tasks"]) == (ended["status"], ended["tasks"])
        assert after["tasks"][0]["status"] == "running"
        assert await pushes_left(h) == 0
        tg.cancel_scope.cancel()


@pytest.mark.only_on("postgresql", "SQLite runs one write transaction at a time: no lock order")
async def test_an_answer_locks_its_run_before_its_row_as_a_cancel_does(
    make_harness: HarnessFactory, db_url: str
) -> None:
    # recording the answer took its row's lock, then the run's; a cancel holds the run's
    # and then deletes the run's rows: each waited for the other (PostgreSQL broke the
    # deadlock after a second by failing one of them). Here the cancel's side is a
    # session of the test's, which gives up at once when it meets a lock
    base, _, schema = db_url.partition("?search_path=")
    endpoint = SocketEndpoint(ok(b'{"status": "completed", "result": 3}'), delay=0.5)
    async with make_harness(**SHORT_WAIT) as h, anyio.create_task_group() as tg:
        await tg.start(endpoint.serve)
        run_id, _ = await long_call(h, endpoint)
        cancel = await asyncpg.connect(base, server_settings={"search_path": schema})
        try:
            async with cancel.transaction():
                await cancel.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", run_id)
                blocked = (
                    "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))"
                )
                with anyio.fail_after(10):  # the answer comes, and waits for the run
                    while True:
                        if await cancel.fetchval(blocked, cancel.get_server_pid()):
                            break
                        await anyio.sleep(0.02)
                await cancel.execute("SET LOCAL lock_timeout = '300ms'")
                await cancel.execute("DELETE FROM task_pushes WHERE run_id = $1", run_id)
        finally:
            await cancel.close()
        tg.cancel_scope.cancel()
