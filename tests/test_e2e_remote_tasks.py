"""Remote tasks end to end: a task service in a venv of aiki-task alone, called by runs.

The service (`task_service_app.py`) runs under uvicorn from a venv holding only
aiki-core, aiki-task and uvicorn, built once for the module. The first tests sign
pushes themselves and post them to it: only a push signed with the endpoint's secret,
fresh and seen once, runs a task. The others register it as a task endpoint of a real
server and call its tasks from runs on a normal `Worker`. The server waits 1 s for an
answer in the worker's request: the slow tasks' attempts go on without the worker,
their runs suspended (`awaiting_task`) until the server records the outcome.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from pydantic import BaseModel

from aiki_client import Client
from aiki_core import RetryPolicy, RunStatus, TaskStatus, WorkflowFailedError
from aiki_core.push import PushSecret, sign_push
from aiki_core.sdk import new_run_id
from aiki_core.wire import PushedTask, PushedTaskAnswer, task_address
from aiki_server.testing import free_port
from aiki_task import remote_task
from aiki_worker import Worker
from aiki_workflow import WorkflowRun, workflow
from e2e_support import QUIET
from task_service_app import (
    LEDGER_VARIABLE,
    SECRET_VARIABLE,
    TASKS,
    Image,
    Thumb,
    flaky_resize,
    resize_image,
    slow_flaky,
    slow_resize,
)
from test_distributions import ROOT, _uv, _venv, _wheel

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiki_core.sdk import ExecutableVersion
    from aiki_core.wire import TaskRecord
    from aiki_server.testing import LoggedProcess, ServerProcess
    from live_processes import LiveProcesses

pytestmark = pytest.mark.slow

SERVICE_ONLY = ("aiki-core", "aiki-task")
"""The monorepo distributions the task service's venv holds."""


@pytest.fixture(scope="module")
def service_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with aiki-core, aiki-task and uvicorn, nothing else of Aiki; its python."""
    wheels = tmp_path_factory.mktemp("wheels")
    for package in SERVICE_ONLY:
        _uv("build", "--wheel", "--quiet", "--out-dir", wheels, ROOT / "packages" / package)
    where = tmp_path_factory.mktemp("service")
    return _venv(where, wheels, *(_wheel(wheels, p) for p in SERVICE_ONLY), "uvicorn")


@dataclass
class TaskService:
    """The task service's process, where it listens, its secret and its ledger."""

    process: LoggedProcess
    url: str
    secret: PushSecret
    ledger: Path

    def ran(self, name: str | None = None) -> list[tuple[str, str, int]]:
        """(task, idempotency key, attempt) of every attempt that ran, of `name` if given."""
        lines = self.ledger.read_text().splitlines() if self.ledger.exists() else []
        rows = [(t, key, int(attempt)) for t, key, attempt in map(str.split, lines)]
        return [row for row in rows if name is None or row[0] == name]


async def start_service(
    processes: LiveProcesses,
    python: Path,
    ledger: Path,
    secret: PushSecret,
    port: int | None = None,
) -> TaskService:
    """Serve `task_service_app` with uvicorn from `python`'s venv, once it answers."""
    port = port or free_port()
    process = await processes.spawn(
        "task-service",
        [
            str(python),
            "-m",
            "uvicorn",
            "--factory",
            "task_service_app:create_app",
            "--app-dir",
            str(Path(__file__).parent),
            "--port",
            str(port),
        ],
        env={SECRET_VARIABLE: str(secret), LEDGER_VARIABLE: str(ledger)},
    )
    url = f"http://127.0.0.1:{port}/"
    async with httpx.AsyncClient() as http:
        with anyio.fail_after(30):
            while True:
                assert process.returncode is None, process.log_text(tail=40)
                try:
                    await http.get(url)
                except httpx.TransportError:
                    await anyio.sleep(0.1)
                else:
                    return TaskService(process, url, secret, ledger)


@pytest.fixture
async def service(processes: LiveProcesses, service_python: Path, tmp_path: Path) -> TaskService:
    secret = PushSecret.generate()
    return await start_service(processes, service_python, tmp_path / "ledger", secret)


def pushed(name: str, payload: Any, attempt: int = 1) -> bytes:
    """A pushed attempt of `name` with `payload` as its input (no codec)."""
    return (
        PushedTask(
            run_id="run-1",
            task_name=name,
            address=task_address(name, payload),
            occurrence=0,
            attempt=attempt,
            input=payload,
        )
        .model_dump_json()
        .encode()
    )


async def post(
    service: TaskService, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            service.url, content=body, headers={"content-type": "application/json", **headers}
        )
    return answer.status_code, json.loads(answer.content)


IMAGE = {"url": "https://img.test/cat.png", "width": 800}


async def test_a_signed_push_runs_one_attempt_and_answers_its_typed_result(
    service: TaskService,
) -> None:
    body = pushed("resize-image", IMAGE)
    status, answer = await post(service, body, sign_push(body, [service.secret]))
    assert status == 200
    assert PushedTaskAnswer.model_validate(answer) == PushedTaskAnswer(
        status="completed", result={"url": "https://img.test/cat.png?w=64", "width": 64}
    )
    address = task_address("resize-image", IMAGE)
    assert service.ran() == [("resize-image", f"run-1:{address}:0", 1)]


async def test_a_failing_attempt_is_an_answer_and_is_not_retried_there(
    service: TaskService,
) -> None:
    body = pushed("flaky-resize", IMAGE)
    status, answer = await post(service, body, sign_push(body, [service.secret]))
    assert status == 200
    failed = PushedTaskAnswer.model_validate(answer)
    assert failed.status == "failed" and failed.error is not None
    assert (failed.error.type, failed.error.retryable) == ("ConnectionError", True)
    assert "the image store is down (attempt 1)" in failed.error.message
    assert len(service.ran("flaky-resize")) == 1  # the caller's retry policy retries


async def test_a_payload_of_the_wrong_type_fails_without_retry(service: TaskService) -> None:
    body = pushed("resize-image", {"url": "https://img.test/cat.png", "width": "wide"})
    status, answer = await post(service, body, sign_push(body, [service.secret]))
    failed = PushedTaskAnswer.model_validate(answer)
    assert status == 200 and failed.error is not None
    assert failed.error.code == "payload_validation" and not failed.error.retryable
    assert "width" in failed.error.message
    assert service.ran() == []


async def test_pushes_that_do_not_hold_are_refused_and_run_nothing(service: TaskService) -> None:
    body = pushed("resize-image", IMAGE)
    good = sign_push(body, [service.secret])
    tampered = body.replace(b"cat.png", b"dog.png")
    refused = [
        (tampered, good),  # the body changed after signing
        (body, sign_push(body, [PushSecret.generate()])),  # another endpoint's key
        (body, sign_push(body, [service.secret], now=time.time() - 3600)),  # an old push
        (body, {}),  # not signed at all
    ]
    for content, headers in refused:
        status, answer = await post(service, content, headers)
        assert (status, answer["error"]["code"]) == (401, "push_signature_invalid")
    assert service.ran() == []
    assert (await post(service, body, good))[0] == 200
    status, answer = await post(service, body, good)  # the same delivery again: a replay
    assert (status, answer["error"]["code"]) == (401, "push_signature_invalid")
    assert len(service.ran()) == 1


async def test_a_signed_push_that_is_not_a_task_attempt_is_refused(service: TaskService) -> None:
    for body, expected in [
        (b'{"task_name": "resize-image"}', (422, "payload_validation")),
        (pushed("no-such-task", IMAGE), (404, "not_found")),
    ]:
        status, answer = await post(service, body, sign_push(body, [service.secret]))
        assert (status, answer["error"]["code"]) == expected
    async with httpx.AsyncClient() as http:
        got = await http.get(service.url)
    assert (got.status_code, got.headers["allow"]) == (405, "POST")
    assert service.ran() == []


# -- runs that call the service's tasks -------------------------------------------------


class WrongImage(BaseModel):
    """What a caller with an outdated idea of the task's input sends: width as text."""

    url: str
    width: str


thumbnails = workflow("thumbnails")
by_types = remote_task("resize-image", input=Image, output=Thumb)
outdated = remote_task(
    "resize-image",
    input=WrongImage,
    output=Thumb,
    retry=RetryPolicy.fixed(max_attempts=3, delay=timedelta(milliseconds=100)),
)
unserved = remote_task("nobody-serves-this", input=Image, output=Thumb)
patient = resize_image.with_options(
    retry=RetryPolicy.fixed(max_attempts=60, delay=timedelta(milliseconds=500))
).remote()


@thumbnails.v("shared")
async def shared_v1(run: WorkflowRun, image: Image) -> list[Thumb]:
    """Two calls (a shared definition, and one by types), a sleep, a replay, a third."""
    first = await resize_image.remote().start(run, image)
    second = await by_types.start(run, Image(url=image.url + "#2", width=image.width))
    await run.sleep("between", timedelta(seconds=1))  # the run resumes by replay
    third = await by_types.start(run, Image(url=image.url + "#3", width=image.width))
    return [first, second, third]


@thumbnails.v("side-by-side")
async def side_by_side_v1(run: WorkflowRun, image: Image) -> list[Thumb]:
    """Four calls at once, more than the endpoint takes at a time (no retries)."""
    calls = [by_types.start(run, Image(url=f"{image.url}#{n}", width=1)) for n in range(4)]
    return list(await asyncio.gather(*calls))  # noqa: TID251 - users do


@thumbnails.v("flaky")
async def flaky_v1(run: WorkflowRun, image: Image) -> Thumb:
    return await flaky_resize.remote().start(run, image)


@thumbnails.v("outdated")
async def outdated_v1(run: WorkflowRun, image: Image) -> Thumb:
    return await outdated.start(run, WrongImage(url=image.url, width="wide"))


@thumbnails.v("unserved")
async def unserved_v1(run: WorkflowRun, image: Image) -> Thumb:
    return await unserved.start(run, image)


@thumbnails.v("patient")
async def patient_v1(run: WorkflowRun, image: Image) -> Thumb:
    return await patient.start(run, image)


@thumbnails.v("slow")
async def slow_v1(run: WorkflowRun, image: Image) -> Thumb:
    return await slow_resize.remote().start(run, image)


@thumbnails.v("slow-flaky")
async def slow_flaky_v1(run: WorkflowRun, image: Image) -> Thumb:
    return await slow_flaky.remote().start(run, image)


VERSIONS: list[ExecutableVersion] = [
    side_by_side_v1,
    shared_v1,
    flaky_v1,
    outdated_v1,
    unserved_v1,
    patient_v1,
    slow_v1,
    slow_flaky_v1,
]
RESULT_TIMEOUT = timedelta(seconds=60)
SHORT_WAIT = ("--remote-task-wait", "1")
"""The server's wait for an answer in the worker's request: the slow tasks outlast it."""


@dataclass
class Deployment:
    """A server, a worker of `VERSIONS` on it, and a task endpoint registered there."""

    server: ServerProcess
    client: Client
    endpoint_url: str
    secret: PushSecret

    async def serve(self, processes: LiveProcesses, python: Path, ledger: Path) -> TaskService:
        """Start the task service where the endpoint points."""
        port = int(self.endpoint_url.rsplit(":", 1)[1].rstrip("/"))
        return await start_service(processes, python, ledger, self.secret, port=port)


@pytest.fixture
async def deployment(db_url: str, processes: LiveProcesses) -> AsyncIterator[Deployment]:
    server = await processes.start_server(db_url, *SHORT_WAIT)
    endpoint_url = f"http://127.0.0.1:{free_port()}/"
    async with (
        Client(server.base_url, logger=QUIET) as client,
        Worker(client, VERSIONS, logger=QUIET),
    ):
        created = await client.endpoints.create(
            endpoint_url,
            tasks=TASKS,
            timeout=timedelta(seconds=20),
            max_in_flight=1,  # side-by-side calls wait for each other's push
        )
        secret = PushSecret.parse(created.secret)
        yield Deployment(server, client, endpoint_url, secret)


def picture(name: str) -> Image:
    return Image(url=f"https://img.test/{name}.png", width=100)


def task_records(records: list[TaskRecord], name: str) -> list[TaskRecord]:
    return [r for r in records if r.name == name]


async def test_runs_get_typed_results_and_a_replay_does_not_call_the_service_again(
    deployment: Deployment, processes: LiveProcesses, service_python: Path, tmp_path: Path
) -> None:
    service = await deployment.serve(processes, service_python, tmp_path / "ledger")
    image = Image(url="https://img.test/cat.png", width=800)
    handle = await shared_v1.start(deployment.client, image)
    thumbs = await handle.result(timeout=RESULT_TIMEOUT)
    assert thumbs == [
        Thumb(url="https://img.test/cat.png?w=64", width=64),
        Thumb(url="https://img.test/cat.png#2?w=64", width=64),
        Thumb(url="https://img.test/cat.png#3?w=64", width=64),
    ]
    assert all(isinstance(thumb, Thumb) for thumb in thumbs)
    # the sleep made the run replay its first two calls from the record: three attempts ran
    assert len(service.ran("resize-image")) == 3
    detail = await handle.detail()
    calls = task_records(detail.tasks, "resize-image")
    assert [(r.status, len(r.attempts)) for r in calls] == [(TaskStatus.COMPLETED, 1)] * 3


async def test_calls_beyond_the_endpoints_in_flight_bound_wait_for_their_turn(
    deployment: Deployment, processes: LiveProcesses, service_python: Path, tmp_path: Path
) -> None:
    service = await deployment.serve(processes, service_python, tmp_path / "ledger")
    handle = await side_by_side_v1.start(deployment.client, picture("f"))
    thumbs = await handle.result(timeout=RESULT_TIMEOUT)
    assert [t.url for t in thumbs] == [f"https://img.test/f.png#{n}?w=64" for n in range(4)]
    assert len(service.ran("resize-image")) == 4


async def test_a_failing_remote_task_is_retried_under_its_policy(
    deployment: Deployment, processes: LiveProcesses, service_python: Path, tmp_path: Path
) -> None:
    service = await deployment.serve(processes, service_python, tmp_path / "ledger")
    handle = await flaky_v1.start(deployment.client, picture("a"))
    thumb = await handle.result(timeout=RESULT_TIMEOUT)
    assert thumb == Thumb(url="https://img.test/a.png?w=32", width=32)
    assert [attempt for _, _, attempt in service.ran("flaky-resize")] == [1, 2, 3]
    (record,) = task_records((await handle.detail()).tasks, "flaky-resize")
    assert [a.status for a in record.attempts] == [
        TaskStatus.AWAITING_RETRY,
        TaskStatus.AWAITING_RETRY,
        TaskStatus.COMPLETED,
    ]
    first_error = record.attempts[0].error
    assert first_error is not None and first_error.type == "ConnectionError"


async def test_a_payload_the_service_refuses_fails_the_task_without_retry(
    deployment: Deployment, processes: LiveProcesses, service_python: Path, tmp_path: Path
) -> None:
    service = await deployment.serve(processes, service_python, tmp_path / "ledger")
    handle = await outdated_v1.start(deployment.client, picture("b"))
    with pytest.raises(WorkflowFailedError) as failed:
        await handle.result(timeout=RESULT_TIMEOUT)
    assert failed.value.error.code == "task_failed"
    (record,) = task_records((await handle.detail()).tasks, "resize-image")
    assert (record.status, len(record.attempts)) == (TaskStatus.FAILED, 1)
    assert record.error is not None
    assert (record.error.code, record.error.retryable) == ("payload_validation", False)
    assert service.ran() == []


async def test_a_task_no_endpoint_serves_fails_with_an_error_naming_it(
    deployment: Deployment,
) -> None:
    handle = await unserved_v1.start(deployment.client, picture("c"))
    with pytest.raises(WorkflowFailedError):
        await handle.result(timeout=RESULT_TIMEOUT)
    (record,) = task_records((await handle.detail()).tasks, "nobody-serves-this")
    assert record.error is not None and record.error.code == "server_unavailable"
    assert "no task endpoint" in record.error.message
    assert "'nobody-serves-this'" in record.error.message


async def test_a_call_while_the_endpoint_is_down_is_retried_until_it_is_back(
    deployment: Deployment, processes: LiveProcesses, service_python: Path, tmp_path: Path
) -> None:
    handle = await patient_v1.start(deployment.client, picture("d"))
    with anyio.fail_after(30):  # the service is down: attempts fail, and are retried
        while True:
            records = task_records((await handle.detail()).tasks, "resize-image")
            if records and len(records[0].attempts) >= 3:
                break
            await anyio.sleep(0.2)
    error = records[0].attempts[0].error
    assert error is not None and error.code == "server_unavailable"
    assert deployment.endpoint_url.rstrip("/") in error.message
    service = await deployment.serve(processes, service_python, tmp_path / "ledger")
    thumb = await handle.result(timeout=RESULT_TIMEOUT)
    assert thumb == Thumb(url="https://img.test/d.png?w=64", width=64)
    assert len(service.ran("resize-image")) == 1
    assert await handle.status() is RunStatus.COMPLETED


async def test_a_push_for_a_run_its_caller_does_not_hold_is_refused(
    deployment: Deployment,
) -> None:
    handle = await shared_v1.start(deployment.client, picture("e"))
    await handle.cancel()
    request = {
        "revision": 0,
        "name": "resize-image",
        "address": task_address("resize-image", IMAGE),
        "occurrence": 0,
        "attempt": 1,
        "input": IMAGE,
    }
    async with httpx.AsyncClient(base_url=deployment.server.base_url) as http:
        refused = await http.post(f"/api/v1/runs/{handle.id}/remote-tasks", json=request)
        missing = await http.post(f"/api/v1/runs/{new_run_id()}/remote-tasks", json=request)
    assert refused.status_code == 409, refused.text
    assert missing.status_code == 404, missing.text


# -- long remote tasks: the run suspends, the worker is freed ----------------------------


async def test_a_long_remote_task_suspends_its_run_and_frees_the_worker(
    deployment: Deployment, processes: LiveProcesses, service_python: Path, tmp_path: Path
) -> None:
    service = await deployment.serve(processes, service_python, tmp_path / "ledger")
    handle = await slow_v1.start(deployment.client, picture("g"))
    await handle.wait_for_status([RunStatus.AWAITING_TASK], timeout=RESULT_TIMEOUT)
    detail = await handle.detail()
    assert [w.kind for w in detail.waits] == ["task"]
    assert detail.pending_reason is not None
    assert "waiting for task 'slow-resize' (attempt 1)" in detail.pending_reason
    assert deployment.endpoint_url.rstrip("/") in detail.pending_reason
    workers = (await deployment.client.list_workers()).workers
    assert workers and sum(w.running for w in workers) == 0  # no worker holds the run
    thumb = await handle.result(timeout=RESULT_TIMEOUT)
    assert thumb == Thumb(url="https://img.test/g.png?w=16", width=16)
    assert len(service.ran("slow-resize")) == 1  # the replay took the recorded result
    (record,) = task_records((await handle.detail()).tasks, "slow-resize")
    assert [a.status for a in record.attempts] == [TaskStatus.COMPLETED]


async def test_a_long_remote_task_that_fails_is_retried_under_its_policy(
    deployment: Deployment, processes: LiveProcesses, service_python: Path, tmp_path: Path
) -> None:
    service = await deployment.serve(processes, service_python, tmp_path / "ledger")
    handle = await slow_flaky_v1.start(deployment.client, picture("h"))
    thumb = await handle.result(timeout=RESULT_TIMEOUT)
    assert thumb == Thumb(url="https://img.test/h.png?w=8", width=8)
    assert [attempt for _, _, attempt in service.ran("slow-flaky")] == [1, 2]
    detail = await handle.detail()
    (record,) = task_records(detail.tasks, "slow-flaky")
    assert [a.status for a in record.attempts] == [
        TaskStatus.AWAITING_RETRY,
        TaskStatus.COMPLETED,
    ]
    first_error = record.attempts[0].error
    assert first_error is not None and first_error.type == "ConnectionError"
    assert RunStatus.AWAITING_TASK in {h.to_status for h in detail.history}


async def test_a_long_push_whose_server_dies_is_pushed_again_after_its_restart(
    deployment: Deployment,
    processes: LiveProcesses,
    service_python: Path,
    tmp_path: Path,
    db_url: str,
) -> None:
    service = await deployment.serve(processes, service_python, tmp_path / "ledger")
    handle = await slow_v1.start(deployment.client, picture("i"))
    await handle.wait_for_status([RunStatus.AWAITING_TASK], timeout=RESULT_TIMEOUT)
    server = deployment.server
    server.kill()
    assert await server.wait() == -signal.SIGKILL
    port = int(server.base_url.rsplit(":", 1)[1])
    await processes.start_server(db_url, *SHORT_WAIT, port=port)
    # the push's row outlives its replica: once its lease runs out, it is pushed again
    thumb = await handle.result(timeout=RESULT_TIMEOUT)
    assert thumb == Thumb(url="https://img.test/i.png?w=16", width=16)
    (key,) = {key for _, key, _ in service.ran("slow-resize")}
    assert len(service.ran("slow-resize")) == 2  # at least once, under one idempotency key
    assert key.startswith(handle.id)


async def test_a_cancel_while_a_long_task_runs_drops_its_answer(
    deployment: Deployment, processes: LiveProcesses, service_python: Path, tmp_path: Path
) -> None:
    service = await deployment.serve(processes, service_python, tmp_path / "ledger")
    handle = await slow_v1.start(deployment.client, picture("j"))
    await handle.wait_for_status([RunStatus.AWAITING_TASK], timeout=RESULT_TIMEOUT)
    await handle.cancel()
    with anyio.fail_after(30):
        while True:
            if service.ran("slow-resize-done"):
                break
            await anyio.sleep(0.1)
    await anyio.sleep(1.0)  # the answer reaches the server, which finds no row for it
    detail = await handle.detail()
    assert detail.status is RunStatus.CANCELLED
    (record,) = task_records(detail.tasks, "slow-resize")
    assert record.status is TaskStatus.RUNNING  # its answer was not recorded
    assert len(service.ran("slow-resize")) == 1


async def test_a_run_paused_while_a_long_task_runs_gets_its_result_on_resume(
    deployment: Deployment, processes: LiveProcesses, service_python: Path, tmp_path: Path
) -> None:
    service = await deployment.serve(processes, service_python, tmp_path / "ledger")
    handle = await slow_v1.start(deployment.client, picture("k"))
    await handle.wait_for_status([RunStatus.AWAITING_TASK], timeout=RESULT_TIMEOUT)
    await handle.pause()
    with anyio.fail_after(30):  # the answer is recorded while the run is paused
        while True:
            (record,) = task_records((await handle.detail()).tasks, "slow-resize")
            if record.status is TaskStatus.COMPLETED:
                break
            await anyio.sleep(0.2)
    assert await handle.status() is RunStatus.PAUSED
    await handle.resume()
    thumb = await handle.result(timeout=RESULT_TIMEOUT)
    assert thumb == Thumb(url="https://img.test/k.png?w=16", width=16)
    assert len(service.ran("slow-resize")) == 1
