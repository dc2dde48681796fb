"""A workflow endpoint (`aiki_worker.asgi_app`) driven as the server's dispatcher drives it.

Most tests run a real server process and the endpoint (`push_app.py`) under uvicorn in
a process of its own. The test plays the dispatcher: it claims runs through the
server's API as worker `endpoint:test`, wraps each in a `PushedRun`, signs it with
`sign_push` and POSTs it to the endpoint. Task bodies count each execution in a file,
so a test sees what ran, across pushes and kills. One test drives the endpoint
through `lambda_handler` with a synthetic API Gateway event, in this process; others
call the app in this process with hostile requests it must refuse before running.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

import push_app
from aiki_client import Client
from aiki_core import RunStatus, TaskStatus
from aiki_core.push import PushSecret, sign_push
from aiki_core.wire import ClaimRequest, PushedRun, PushedRunAnswer, WorkflowCapability
from aiki_worker import lambda_handler
from e2e_support import QUIET, Counters
from fault_proxy import Fault, FaultProxy
from push_app import Steps, steps_v1

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiki_core.sdk import WorkflowRunHandle
    from aiki_core.wire import ClaimedRun
    from live_processes import LiveProcesses

pytestmark = pytest.mark.slow

PUSH_APP = Path(push_app.__file__)
SECRET = PushSecret.generate()
WORKER_ID = "endpoint:test"
CAPABILITY = WorkflowCapability(workflow="push-steps", version="1.0.0")
RESULT_TIMEOUT = timedelta(seconds=60)
IDLE_TIMEOUT = ("--claim-idle-timeout", "2")
"""A killed endpoint's claim goes idle soon (its heartbeats every second keep it alive)."""


async def _start_endpoint(processes: LiveProcesses, server: str, counters: Path) -> str:
    """An endpoint process whose client writes to `server`; its URL, once it answers."""
    return await push_app.start(processes, server, str(SECRET), counters)


async def _claim(client: Client, count: int) -> list[ClaimedRun]:
    """Claim `count` runs as the dispatcher would, under the endpoint's worker id."""
    claimed: list[ClaimedRun] = []
    with anyio.fail_after(30):
        while len(claimed) < count:
            response = await client.claim(
                ClaimRequest(
                    worker_id=WORKER_ID,
                    capabilities=[CAPABILITY],
                    max_runs=count - len(claimed),
                    wait=timedelta(seconds=1),
                )
            )
            claimed.extend(response.runs)
    return claimed


def _signed(
    claim: ClaimedRun,
    *,
    answer_within: timedelta = timedelta(seconds=60),
    secrets: Sequence[PushSecret] = (SECRET,),
    now: float | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one push of `claim`."""
    body = (
        PushedRun(claim=claim, worker_id=WORKER_ID, answer_within=answer_within)
        .model_dump_json()
        .encode()
    )
    headers = sign_push(body, secrets, now=now)
    headers["content-type"] = "application/json"
    return body, headers


async def _push(
    url: str, claim: ClaimedRun, *, answer_within: timedelta = timedelta(seconds=60)
) -> PushedRunAnswer:
    body, headers = _signed(claim, answer_within=answer_within)
    async with httpx.AsyncClient(timeout=120) as http:
        answer = await http.post(url, content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    return PushedRunAnswer.model_validate_json(answer.content)


async def _completed_steps(handle: WorkflowRunHandle[Any]) -> list[int]:
    """The indices of the steps on record as completed."""
    indices = []
    for task in (await handle.detail()).tasks:
        if task.status is TaskStatus.COMPLETED:
            assert isinstance(task.input, dict), task.input
            indices.append(int(str(task.input["index"])))
    return sorted(indices)


async def test_pushed_runs_complete_with_each_task_run_once(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    server = await processes.start_server(db_url)
    counters = Counters(tmp_path / "counters")
    url = await _start_endpoint(processes, server.base_url, counters.directory)
    async with Client(server.base_url, logger=QUIET) as client:
        handles = [await steps_v1.start(client, Steps(key=f"r{i}")) for i in range(50)]
        claims = await _claim(client, 50)
        answers: list[PushedRunAnswer] = []

        async def push(claim: ClaimedRun) -> None:
            answers.append(await _push(url, claim))

        async with anyio.create_task_group() as tg:
            for claim in claims:
                tg.start_soon(push, claim)
        assert sorted(a.outcome for a in answers) == ["completed"] * 50
        assert {a.run_id for a in answers} == {h.id for h in handles}
        for handle in handles:
            assert await handle.result(timeout=RESULT_TIMEOUT) == 0 + 1 + 4
    assert counters.counts() == {f"r{i}-{s}": 1 for i in range(50) for s in range(3)}


async def test_a_killed_endpoint_s_run_resumes_on_the_next_push_without_redoing_tasks(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    server = await processes.start_server(db_url, *IDLE_TIMEOUT)
    counters = Counters(tmp_path / "counters")
    url = await _start_endpoint(processes, server.base_url, counters.directory)
    async with Client(server.base_url, logger=QUIET) as client:
        handle = await steps_v1.start(client, Steps(key="k", size=4, block_at=2))
        [claim] = await _claim(client, 1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_push_until_killed, url, claim)
            await counters.wait_for_total("k-2", 1, timeout=30)  # step 2 blocks now
            endpoint = processes.started[-1]
            endpoint.kill()
            assert await endpoint.wait() == -signal.SIGKILL
        assert await _completed_steps(handle) == [0, 1]
        url = await _start_endpoint(processes, server.base_url, counters.directory)
        [again] = await _claim(client, 1)  # once the dead claim went idle
        assert again.run.id == handle.id
        assert (await _push(url, again)).outcome == "completed"
        assert await handle.result(timeout=RESULT_TIMEOUT) == 0 + 1 + 4 + 9
    # the steps on record were replayed; only the one in flight at the kill ran again
    assert counters.counts("k-") == {"k-0": 1, "k-1": 1, "k-2": 2, "k-3": 1}


async def _push_until_killed(url: str, claim: ClaimedRun) -> None:
    body, headers = _signed(claim)
    async with httpx.AsyncClient(timeout=120) as http:
        with pytest.raises(httpx.TransportError):
            await http.post(url, content=body, headers=headers)


async def test_a_run_not_done_before_answer_within_is_released_and_resumed_later(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    server = await processes.start_server(db_url)
    counters = Counters(tmp_path / "counters")
    url = await _start_endpoint(processes, server.base_url, counters.directory)
    async with Client(server.base_url, logger=QUIET) as client:
        handle = await steps_v1.start(client, Steps(key="s", size=3, block_at=1))
        [claim] = await _claim(client, 1)
        answer = await _push(url, claim, answer_within=timedelta(seconds=3))
        assert answer.outcome == "released"
        assert await handle.status() is RunStatus.QUEUED
        assert await _completed_steps(handle) == [0]
        [again] = await _claim(client, 1)
        assert (await _push(url, again)).outcome == "completed"
        assert await handle.result(timeout=RESULT_TIMEOUT) == 0 + 1 + 4
    assert counters.counts("s-") == {"s-0": 1, "s-1": 2, "s-2": 1}


async def test_a_run_cancelled_while_pushed_stops_and_is_answered_lost(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    server = await processes.start_server(db_url)
    counters = Counters(tmp_path / "counters")
    url = await _start_endpoint(processes, server.base_url, counters.directory)
    async with Client(server.base_url, logger=QUIET) as client:
        handle = await steps_v1.start(client, Steps(key="c", block_at=1))
        [claim] = await _claim(client, 1)
        answers: list[PushedRunAnswer] = []

        async def push() -> None:
            answers.append(await _push(url, claim))

        async with anyio.create_task_group() as tg:
            tg.start_soon(push)
            await counters.wait_for_total("c-1", 1, timeout=30)  # step 1 blocks now
            await handle.cancel("no longer wanted")
        # the next heartbeat's directive stopped it: it wrote nothing more
        assert [(a.run_id, a.outcome) for a in answers] == [(handle.id, "lost")]
        # it ran: its cleanup waits for a claim (none comes here)
        assert await handle.status() is RunStatus.CLEANING_UP
        assert await _completed_steps(handle) == [0]
    assert counters.counts("c-") == {"c-0": 1, "c-1": 1}


async def test_server_errors_on_the_endpoint_s_writes_are_tried_again(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    server = await processes.start_server(db_url)
    counters = Counters(tmp_path / "counters")
    faults = iter(
        [
            Fault("status", 503, retry_after=0.2),  # a task record
            Fault("drop"),  # a task record
            Fault("status", 502),  # the transition
            Fault("drop_after"),  # the transition, on record but its answer lost
        ]
    )

    def decide(method: str, path: str) -> Fault | None:
        return next(faults, None) if path.endswith(("/tasks", "/transition")) else None

    async with (
        FaultProxy(server.base_url, decide) as proxy,
        Client(server.base_url, logger=QUIET) as client,
    ):
        url = await _start_endpoint(processes, proxy.base_url, counters.directory)
        handle = await steps_v1.start(client, Steps(key="f"))
        [claim] = await _claim(client, 1)
        assert (await _push(url, claim)).outcome == "completed"
        assert next(faults, None) is None, "not every fault was met"
        assert await handle.result(timeout=RESULT_TIMEOUT) == 5
    assert counters.counts("f-") == {"f-0": 1, "f-1": 1, "f-2": 1}


async def test_pushes_that_fail_the_signature_check_run_nothing(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    server = await processes.start_server(db_url)
    counters = Counters(tmp_path / "counters")
    url = await _start_endpoint(processes, server.base_url, counters.directory)
    async with Client(server.base_url, logger=QUIET) as client, httpx.AsyncClient() as http:
        handle = await steps_v1.start(client, Steps(key="t"))
        [claim] = await _claim(client, 1)
        body, headers = _signed(claim)
        tampered = body.replace(b'"key":"t"', b'"key":"u"')
        assert tampered != body
        _, wrong_headers = _signed(claim, secrets=[PushSecret.generate()])
        stale_body, stale_headers = _signed(claim, now=time.time() - 3600)
        refused = [
            await http.post(url, content=tampered, headers=headers),
            await http.post(url, content=body, headers=wrong_headers),
            await http.post(url, content=stale_body, headers=stale_headers),
            await http.post(url, content=body, headers={"content-type": "application/json"}),
        ]
        for answer in refused:
            assert answer.status_code == 401, answer.text
            assert answer.json()["error"]["code"] == "push_signature_invalid"
        detail = await handle.detail()
        assert detail.status is RunStatus.RUNNING
        assert detail.revision == claim.run.revision
        assert detail.tasks == []
        assert counters.counts() == {}

        first = await http.post(url, content=body, headers=headers, timeout=60)
        assert first.status_code == 200, first.text
        replayed = await http.post(url, content=body, headers=headers, timeout=60)
        assert replayed.status_code == 401, replayed.text
        assert "replay" in replayed.json()["error"]["message"]
        assert await handle.result(timeout=RESULT_TIMEOUT) == 5
    assert counters.counts("t-") == {"t-0": 1, "t-1": 1, "t-2": 1}


async def test_bad_requests_get_clear_errors_and_the_endpoint_serves_on(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    server = await processes.start_server(db_url)
    counters = Counters(tmp_path / "counters")
    url = await _start_endpoint(processes, server.base_url, counters.directory)
    async with Client(server.base_url, logger=QUIET) as client, httpx.AsyncClient() as http:
        handle = await steps_v1.start(client, Steps(key="b"))
        [claim] = await _claim(client, 1)
        elsewhere = await http.post(url + "other", content=b"{}")
        assert elsewhere.status_code == 404
        not_json = b"not a run"
        garbage = await http.post(url, content=not_json, headers=sign_push(not_json, [SECRET]))
        assert garbage.status_code == 422
        assert garbage.json()["error"]["code"] == "payload_validation"
        unknown = claim.model_copy(
            update={"run": claim.run.model_copy(update={"version": "9.9.9"})}
        )
        body, headers = _signed(unknown)
        not_served = await http.post(url, content=body, headers=headers)
        assert not_served.status_code == 404
        assert "does not serve push-steps version 9.9.9" in not_served.json()["error"]["message"]
        huge = b"x" * (40 * 1024 * 1024)
        too_large = await http.post(url, content=huge, headers=sign_push(huge, [SECRET]))
        assert too_large.status_code == 413
        assert counters.counts() == {}
        assert (await _push(url, claim)).outcome == "completed"
        assert await handle.result(timeout=RESULT_TIMEOUT) == 5


def _api_gateway_event(body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event of a POST to `/`."""
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/",
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api",
            "domainName": "api.example.test",
            "domainPrefix": "api",
            "http": {
                "method": "POST",
                "path": "/",
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "aiki-server",
            },
            "requestId": "request",
            "routeKey": "$default",
            "stage": "$default",
            "time": "05/Dec/2026:12:00:00 +0000",
            "timeEpoch": 0,
        },
        "body": base64.b64encode(body).decode(),
        "isBase64Encoded": True,
    }


def _invoke(handler: Any, event: dict[str, Any]) -> dict[str, Any]:
    """One invocation, on a fresh event loop of this thread (as a new Lambda runtime has)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        result: dict[str, Any] = handler(event, _LambdaContext())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return result


class _LambdaContext:
    """The bits of a Lambda context object a handler may read."""

    function_name = "aiki-endpoint"
    aws_request_id = "request"


async def test_a_lambda_invocation_runs_a_pushed_run_to_completion(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    server = await processes.start_server(db_url)
    push_app.SETTINGS.counters = tmp_path / "counters"
    await anyio.Path(push_app.SETTINGS.counters).mkdir()
    counters = Counters(push_app.SETTINGS.counters)
    handler = lambda_handler(push_app.app(server.base_url, str(SECRET)))
    async with Client(server.base_url, logger=QUIET) as client:
        handles = [await steps_v1.start(client, Steps(key=f"l{i}")) for i in range(2)]
        # two invocations, each on an event loop of its own (as Lambda may run them)
        for handle in handles:
            [claim] = await _claim(client, 1)
            assert claim.run.id == handle.id
            body, headers = _signed(claim)
            event = _api_gateway_event(body, headers)
            result = await anyio.to_thread.run_sync(_invoke, handler, event)
            assert result["statusCode"] == 200, result
            answer = PushedRunAnswer.model_validate_json(result["body"])
            assert (answer.run_id, answer.outcome) == (handle.id, "completed")
            assert await handle.result(timeout=RESULT_TIMEOUT) == 5
    assert counters.counts() == {f"l{i}-{s}": 1 for i in range(2) for s in range(3)}


async def _call(
    app: Any,
    headers: list[tuple[bytes, bytes]],
    chunks: Sequence[bytes | None],
    method: str = "POST",
) -> tuple[int, dict[str, Any]]:
    """One request to `app` in this process, its body in `chunks`; a `None` last goes away."""
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1 or None in chunks}
        for i, c in enumerate(chunks)
        if c is not None
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": "/", "headers": headers}
    await app(scope, receive, send)
    return sent[0]["status"], json.loads(sent[1]["body"])


async def test_hostile_requests_are_refused_with_a_4xx_before_anything_runs() -> None:
    # in this process: the refusals happen before the app's client is ever used
    app = push_app.app("http://127.0.0.1:9", str(SECRET))
    body = b"not a run"
    signed = [(k.encode(), v.encode()) for k, v in sign_push(body, [SECRET]).items()]
    unsigned = [(k, v) for k, v in signed if k != b"aiki-push-signature"]
    odd_stamp = [(k, b"\xb2" if k == b"aiki-push-timestamp" else v) for k, v in signed]
    cases: list[tuple[list[tuple[bytes, bytes]], Sequence[bytes | None], str, int]] = [
        # "²" is a digit to str.isdigit (latin-1 header bytes) but not to int()
        ([*signed, (b"content-length", b"\xb2")], [body], "POST", 422),
        (odd_stamp, [body], "POST", 401),
        ([*unsigned, (b"aiki-push-signature", b"a" * 1_000_000)], [body], "POST", 401),
        ([*unsigned, (b"aiki-push-signature", b"\xff,=;,,\x00=" * 10)], [body], "POST", 401),
        ([*[(b"x-h", b"v")] * 10_000, *signed], [body], "POST", 401),  # replayed by now
        (signed, [body[:3], b"", body[3:]], "POST", 401),
        (signed, [body[:3], None], "POST", 400),  # the client went away mid-body
        (signed, [body], "HEAD", 405),
    ]
    fresh = [(k.encode(), v.encode()) for k, v in sign_push(body, [SECRET]).items()]
    cases.append((fresh, [body[:3], b"", body[3:]], "POST", 422))  # a chunked body, whole
    for headers, chunks, method, expected in cases:
        status, answer = await _call(app, headers, chunks, method)
        assert status == expected, answer
        assert "error" in answer


async def test_a_refused_push_logs_no_more_of_its_headers_than_a_delivery_id_holds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # nobody is verified yet: a caller must not make each refusal a 60 kB log line
    app = push_app.app("http://127.0.0.1:9", str(SECRET))
    huge_id = "d" * 60_000
    headers = [(b"aiki-push-id", huge_id.encode()), (b"aiki-push-timestamp", b"1")]
    status, _ = await _call(app, headers, [b"{}"])
    assert status == 401
    logged = capsys.readouterr().err
    assert "push refused" in logged
    assert "d" * 65 not in logged
