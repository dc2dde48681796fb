"""Remote tasks end to end: a task service in a venv of aiki-task alone, called by runs.

The service (`task_service_app.py`) runs under uvicorn from a venv holding only
aiki-core, aiki-task and uvicorn, built once for the module. The first tests sign
pushes themselves and post them to it: only a push signed with the endpoint's secret,
fresh and seen once, runs a task. The others register it as a task endpoint of a real
server and call its tasks from runs on a normal `Worker`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

from aiki_core.push import PushSecret, sign_push
from aiki_core.wire import PushedTask, PushedTaskAnswer, task_address
from aiki_server.testing import free_port
from task_service_app import LEDGER_VARIABLE, SECRET_VARIABLE
from test_distributions import ROOT, _uv, _venv, _wheel

if TYPE_CHECKING:
    from aiki_server.testing import LoggedProcess
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
