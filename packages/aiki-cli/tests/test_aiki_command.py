"""The `aiki` command, run as a user runs it: a subprocess against a real server process.

The worker runs in the test's process; every `aiki ...` is `python -m aiki_cli ...`,
whose output the test reads (`--json` parsed) and whose exit code it checks.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import pytest

from aiki_client import Client
from aiki_core import ConsoleLogger, LogLevel, RetryPolicy, RunStatus
from aiki_crypto import AesGcmCodec, KeyRing
from aiki_task import TaskContext, task
from aiki_worker import Worker
from aiki_workflow import WorkflowRun, event, workflow

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from aiki_core.sdk import ExecutableVersion
    from aiki_server.testing import ServerProcess
    from live_processes import LiveProcesses

QUIET = ConsoleLogger(LogLevel.ERROR)
WAIT = timedelta(seconds=30)


@task("cli-charge", retry=RetryPolicy.fixed(max_attempts=3, delay=timedelta(milliseconds=50)))
async def charge(amount: int, ctx: TaskContext) -> int:
    """Fail the first attempt, as a flaky payment service would."""
    if ctx.attempt == 1:
        raise ConnectionError("the payment service is down")
    return amount * 100


approved = event("cli-approved", str)
child = workflow("cli-receipt")


@child.v("1")
async def receipt_v1(run: WorkflowRun, cents: int) -> str:
    """A child run: a receipt for the amount."""
    return f"receipt for {cents}"


order = workflow("cli-order")


@order.v("1")
async def order_v1(run: WorkflowRun, amount: int) -> dict[str, Any]:
    """Charge (retried once), wait for approval, start a child for the receipt."""
    if amount < 0:
        raise ValueError("a negative amount")
    cents = await charge.start(run, amount)
    approval = await approved.wait(run)
    receipt = await (await receipt_v1.start_child(run, cents)).result()
    return {"cents": cents, "approved_by": approval.data, "receipt": receipt}


@order.v("2")
async def order_v2(run: WorkflowRun, amount: int) -> dict[str, Any]:
    """Charges a unit more: its charge is not the one recorded (served in one test only)."""
    cents = await charge.start(run, amount + 1)
    approval = await approved.wait(run)
    return {"cents": cents, "approved_by": approval.data}


napper = workflow("cli-napper")


@napper.v("1")
async def napper_v1(run: WorkflowRun, hours: int) -> str:
    """Sleep for hours: a run to pause, wake and cancel."""
    await run.sleep("nap", timedelta(hours=hours))
    return "rested"


VERSIONS: list[ExecutableVersion] = [order_v1, receipt_v1, napper_v1]


@dataclass
class Done:
    """One `aiki` command's exit code and output."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)


@dataclass
class Aiki:
    """Runs `aiki` against one server, with one key (or none)."""

    url: str
    api_key: str | None = None

    async def __call__(self, *args: str, stdin: str | None = None) -> Done:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIKI_")}
        env |= {"AIKI_URL": self.url, "COLUMNS": "200", "NO_COLOR": "1"}
        if self.api_key is not None:
            env["AIKI_API_KEY"] = self.api_key
        done = await anyio.run_process(
            [sys.executable, "-m", "aiki_cli", *args],
            input=None if stdin is None else stdin.encode(),
            env=env,
            check=False,
        )
        return Done(done.returncode, done.stdout.decode(), done.stderr.decode())


@pytest.fixture
async def server(db_url: str, processes: LiveProcesses) -> ServerProcess:
    return await processes.start_server(db_url)


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[Client]:
    async with (
        Client(server.base_url, logger=QUIET) as client,
        Worker(client, VERSIONS, id="cli-worker", logger=QUIET),
    ):
        yield client


async def test_a_run_started_followed_and_inspected_from_the_command_line(
    server: ServerProcess, client: Client
) -> None:
    aiki = Aiki(server.base_url)
    started = await aiki(
        "runs", "start", "cli-order", "1", "--input", "7", "--reference-id", "order-7", "--json"
    )
    run_id = started.json()["run_id"]
    # the event may come before the run waits for it: it is kept until then
    sent = await aiki("events", "send", run_id, "cli-approved", "--data", '"ada"', "--json")
    assert sent.json()["duplicate"] is False

    result = (await aiki("runs", "result", run_id, "--json")).json()
    assert result == {
        "run_id": run_id,
        "completed": True,
        "result": {"cents": 700, "approved_by": "ada", "receipt": "receipt for 700"},
    }

    detail = (await aiki("runs", "show", run_id, "--json")).json()
    assert detail["status"] == "completed"
    (charged,) = detail["tasks"]
    assert [a["status"] for a in charged["attempts"]] == ["awaiting_retry", "completed"]
    assert "payment service is down" in charged["attempts"][0]["error"]["message"]
    (kid,) = detail["children"]
    assert [e["name"] for e in detail["events"]] == ["cli-approved"]

    shown = await aiki("runs", "show", run_id)
    assert shown.code == 0, shown.err
    for part in ("cli-charge", "ConnectionError", kid["run_id"], "cli-receipt", "History"):
        assert part in shown.out, part

    watched = await aiki("runs", "watch", run_id)
    assert watched.code == 0, watched.err
    assert "completed" in watched.out

    listed = (await aiki("runs", "list", "--reference-id", "order-7", "--json")).json()
    assert [run["id"] for run in listed["runs"]] == [run_id]
    completed = await aiki("runs", "list", "--status", "completed", "--since", "1h", "--json")
    assert {run["id"] for run in completed.json()["runs"]} == {run_id, kid["run_id"]}
    first = (await aiki("runs", "list", "--limit", "1", "--json")).json()
    second = await aiki("runs", "list", "--limit", "1", "--cursor", first["next_cursor"], "--json")
    assert {first["runs"][0]["id"], second.json()["runs"][0]["id"]} == {run_id, kid["run_id"]}

    (worker,) = (await aiki("workers", "list", "--json")).json()["workers"]
    assert worker["id"] == "cli-worker"
    assert {c["workflow"] for c in worker["capabilities"]} == {
        "cli-order",
        "cli-receipt",
        "cli-napper",
    }
    assert "cli-worker" in (await aiki("workers", "list")).out


async def test_a_failed_run_exits_1_and_a_run_is_steered(
    server: ServerProcess, client: Client
) -> None:
    aiki = Aiki(server.base_url)
    failing = (await aiki("runs", "start", "cli-order", "1", "--input", "-1", "--json")).json()
    failed = await aiki("runs", "result", failing["run_id"])
    assert failed.code == 1
    assert "negative amount" in failed.err
    assert len(failed.err.strip().splitlines()) == 1  # one line, no traceback
    assert (await aiki("runs", "watch", failing["run_id"])).code == 1

    nap = await aiki("runs", "start", "cli-napper", "1", "--input", "@-", "--json", stdin="5")
    run_id = nap.json()["run_id"]
    await client.run_handle(run_id).wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
    paused = (await aiki("runs", "pause", run_id, "--json")).json()
    assert paused == {"run_id": run_id, "status": "paused"}
    assert (await aiki("runs", "resume", run_id, "--json")).json()["status"] != "paused"
    await client.run_handle(run_id).wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
    assert (await aiki("runs", "wake", run_id)).code == 0
    assert await client.run_handle(run_id).result(timeout=WAIT) == "rested"
    urgent = (await aiki("runs", "start", "cli-napper", "1", "--input", "0", "--priority", "9",
                         "--json")).json()  # fmt: skip
    assert (await client.run_handle(urgent["run_id"]).detail()).priority == 9
    keyed = await aiki("runs", "list", "--concurrency-key", "nobody", "--json")
    assert keyed.json()["runs"] == []

    again = (await aiki("runs", "start", "cli-napper", "1", "--input", "5", "--json")).json()
    await client.run_handle(again["run_id"]).wait_for_status([RunStatus.SLEEPING], timeout=WAIT)
    cancelled = await aiki("runs", "cancel", again["run_id"])
    assert cancelled.code == 0, cancelled.err
    assert "cleaning_up" in cancelled.out  # it ran: it cleans up, then ends cancelled
    assert (await aiki("runs", "result", again["run_id"])).code == 1


async def test_unserved_runs_are_listed_and_migrated_from_the_command_line(
    server: ServerProcess, client: Client
) -> None:
    aiki = Aiki(server.base_url)
    stranded = (await aiki("runs", "start", "cli-napper", "2", "--input", "0", "--json")).json()
    napping = (await aiki("runs", "start", "cli-napper", "1", "--input", "5", "--json")).json()
    await client.run_handle(napping["run_id"]).wait_for_status([RunStatus.SLEEPING], timeout=WAIT)

    unserved = (await aiki("runs", "list", "--unserved", "--json")).json()
    assert [r["id"] for r in unserved["runs"]] == [stranded["run_id"]]
    shown = await aiki("runs", "show", stranded["run_id"])
    assert "no connected worker serves workflow 'cli-napper' version '2'" in shown.out

    # the sleeping run may go to version 2 too: it is moved, with a warning
    moved = await aiki("runs", "migrate", "cli-napper", "1", "2", "--status", "sleeping")
    assert moved.code == 0, moved.err
    assert "migrated 1 run(s) to 2" in moved.out
    assert "warning: no connected worker serves" in moved.out

    back = (await aiki("runs", "migrate", "cli-napper", "2", "1", "--json")).json()
    assert {r["id"] for r in back["migrated"]} == {stranded["run_id"], napping["run_id"]}
    assert back["to_version_served"] is True
    assert await client.run_handle(stranded["run_id"]).result(timeout=WAIT) == "rested"
    refused = await aiki("runs", "migrate", "cli-napper", "1", "7")
    assert refused.code == 3, refused.err  # version 7 was never seen
    assert len(refused.err.strip().splitlines()) == 1


async def test_a_migration_dry_run_from_the_command_line(
    server: ServerProcess, client: Client
) -> None:
    aiki = Aiki(server.base_url)
    async with Worker(client, [order_v1, order_v2], id="cli-worker-2", logger=QUIET):
        handle = await order_v1.start(client, 5)
        await handle.wait_for_status([RunStatus.AWAITING_EVENT], timeout=WAIT)
        before = await handle.detail()

        shown = await aiki("runs", "migrate", "cli-order", "1", "2", "--dry-run", "--wait", "20")
        asked = await aiki("runs", "migrate", "cli-order", "1", "2", "--dry-run", "--json")
        as_json = asked.json()

    assert shown.code == 0, shown.err
    assert "dry run on 2: 1 run(s) replayed, none moved" in shown.out
    assert f"run {handle.id} on 2" in shown.out
    lines = {line.split()[0]: line for line in shown.out.splitlines() if line.strip()}
    assert "runs a task" in lines["outcome"]
    assert "none" in lines["reused"]
    assert "cli-charge" in shown.out.split("not reused")[1].split("would run")[0]
    assert "cli-charge" in lines["would"]
    [report] = as_json["dry_runs"]
    assert (report["run_id"], report["outcome"], report["reused"]) == (handle.id, "runs_a_task", [])
    assert [c["name"] for c in report["not_reused"]] == ["cli-charge"]
    assert report["would_run"]["name"] == "cli-charge"
    assert as_json["migrated"] == []
    after = await handle.detail()
    assert (after.version, after.revision, after.tasks) == ("1", before.revision, before.tasks)


async def test_schedules_from_the_command_line(server: ServerProcess, client: Client) -> None:
    aiki = Aiki(server.base_url)
    created = await aiki(
        "schedules", "create", "nightly", "cli-napper", "1", "--input", "1",
        "--cron", "0 3 * * *", "--timezone", "Europe/Paris", "--json",
    )  # fmt: skip
    schedule = created.json()
    assert (schedule["name"], schedule["cron"], schedule["input"]) == ("nightly", "0 3 * * *", 1)
    sid = schedule["id"]
    listed = (await aiki("schedules", "list", "--json")).json()
    assert [s["id"] for s in listed["schedules"]] == [sid]
    assert (await aiki("schedules", "pause", sid, "--json")).json()["paused"] is True
    assert (await aiki("schedules", "show", sid, "--json")).json()["paused"] is True
    assert (await aiki("schedules", "resume", sid, "--json")).json()["paused"] is False
    assert "nightly" in (await aiki("schedules", "show", sid)).out
    updated = (await aiki(
        "schedules", "update", sid, "--every", "1h", "--input", "2", "--timeout", "10m",
        "--catch-up", "all", "--catch-up-window", "2h", "--pause", "--json",
    )).json()  # fmt: skip
    assert (updated["id"], updated["cron"], updated["every"], updated["input"]) == (
        sid,
        None,
        3_600_000,
        2,
    )
    assert (updated["timeout"], updated["catch_up"], updated["paused"]) == (600_000, "all", True)
    assert "all, within 2:00:00" in (await aiki("schedules", "show", sid)).out
    untimed = (await aiki("schedules", "update", sid, "--no-timeout", "--json")).json()
    assert (untimed["timeout"], untimed["input"]) == (None, 2)
    # the hourly occurrences of the last five and a half hours, on the creation's grid
    filled = (await aiki("schedules", "backfill", sid, "330m", "0m", "--json")).json()
    assert (len(filled["run_ids"]), filled["started"]) == (6, 6)
    again = (await aiki("schedules", "backfill", sid, "330m", "0m", "--json")).json()
    assert (again["run_ids"], again["started"]) == (filled["run_ids"], 0)
    for run_id in filled["run_ids"]:
        assert (await client.run_handle(run_id).detail()).schedule_id == sid
    bad = await aiki("schedules", "update", sid, "--cron", "* * * * *", "--every", "1m")
    assert bad.code == 2
    assert (await aiki("schedules", "delete", sid)).code == 0
    assert (await aiki("schedules", "show", sid)).code == 3


async def test_concurrency_limits_from_the_command_line(
    server: ServerProcess, client: Client
) -> None:
    aiki = Aiki(server.base_url)
    created = await aiki("concurrency-limits", "set", "reports", "--limit", "3", "--json")
    assert {k: created.json()[k] for k in ("workflow", "limit", "per_key", "source")} == {
        "workflow": "reports",
        "limit": 3,
        "per_key": True,
        "source": "operator",
    }
    changed = await aiki(
        "concurrency-limits", "set", "reports", "--limit", "1", "--whole-workflow",
        "--strategy", "cancel_newest",
    )  # fmt: skip
    assert changed.code == 0 and "reports" in changed.out, changed.err
    held = await client.concurrency_limits.get("reports")
    assert (held.limit, held.per_key, held.strategy.value) == (1, False, "cancel_newest")
    listed = (await aiki("concurrency-limits", "list", "--json")).json()
    assert [(item["workflow"], item["limit"]) for item in listed["limits"]] == [("reports", 1)]
    assert "whole workflow" in (await aiki("concurrency-limits", "list")).out
    assert (await aiki("concurrency-limits", "clear", "reports")).code == 0
    assert (await client.concurrency_limits.list()).limits == []
    gone = await aiki("concurrency-limits", "clear", "reports")
    assert gone.code == 3, gone.err
    for bad in (("--limit", "0"), ("--limit", "2", "--strategy", "sometimes"), ()):
        refused = await aiki("concurrency-limits", "set", "x", *bad)
        assert refused.code == 2, refused.err
    assert (await client.concurrency_limits.list()).limits == []


async def test_retention_from_the_command_line(server: ServerProcess, client: Client) -> None:
    aiki = Aiki(server.base_url)
    shown = await aiki("retention", "get")
    assert shown.code == 0 and "30d" in shown.out and "server" in shown.out, shown.err
    week = await aiki("retention", "set", "7d", "--json")
    assert {k: week.json()[k] for k in ("retention", "source")} == {
        "retention": 7 * 86_400_000,
        "source": "namespace",
    }
    assert (await client.retention.get()).retention == timedelta(days=7)
    kept = await aiki("retention", "set", "forever")
    assert kept.code == 0 and "forever" in kept.out, kept.err
    assert (await client.retention.get()).retention is None
    assert (await aiki("retention", "clear")).code == 0
    assert (await client.retention.get()).source == "server"
    refused = await aiki("retention", "set", "soon")
    assert refused.code == 2, refused.err
    assert (await client.retention.get()).source == "server"


async def test_rate_limits_from_the_command_line(server: ServerProcess, client: Client) -> None:
    aiki = Aiki(server.base_url)
    created = await aiki("rate-limits", "set", "openai", "--limit", "60", "--per", "1m", "--json")
    assert {k: created.json()[k] for k in ("name", "limit", "per")} == {
        "name": "openai",
        "limit": 60,
        "per": 60_000,
    }
    changed = await aiki("rate-limits", "set", "openai", "--limit", "10", "--per", "1s")
    assert changed.code == 0 and "openai" in changed.out
    assert (await client.rate_limits.get("openai")).limit == 10
    listed = (await aiki("rate-limits", "list", "--json")).json()
    assert [(r["name"], r["limit"], r["per"]) for r in listed["rate_limits"]] == [
        ("openai", 10, 1_000)
    ]
    assert "openai" in (await aiki("rate-limits", "list")).out
    assert (await aiki("rate-limits", "delete", "openai")).code == 0
    assert await client.rate_limits.list() == []
    gone = await aiki("rate-limits", "delete", "openai")
    assert gone.code == 3 and "not defined" in gone.err
    for bad in (("--limit", "0", "--per", "1s"), ("--limit", "5", "--per", "0s")):
        refused = await aiki("rate-limits", "set", "x", *bad)
        assert refused.code == 2, refused.err
        assert len(refused.err.strip().splitlines()) == 1
    assert (await aiki("rate-limits", "set", "x", "--limit", "5")).code == 2  # no --per
    assert await client.rate_limits.list() == []


async def test_push_endpoints_from_the_command_line(server: ServerProcess) -> None:
    aiki = Aiki(server.base_url)
    url = "https://orders.example/aiki"
    created = await aiki(
        "endpoints", "create", url, "--workflow", "cli-order", "1", "--workflow", "cli-receipt",
        "1", "--pool", "blue", "--max-in-flight", "3", "--timeout", "30s", "--json",
    )  # fmt: skip
    endpoint, secret = created.json()["endpoint"], created.json()["secret"]
    assert secret.startswith("aiki_push_")
    assert [(w["workflow"], w["pool"]) for w in endpoint["workflows"]] == [
        ("cli-order", "blue"),
        ("cli-receipt", "blue"),
    ]
    assert (endpoint["max_in_flight"], endpoint["timeout"]) == (3, 30_000)
    tasks = await aiki("endpoints", "create", "http://tasks.example/", "--task", "cli-charge")
    assert tasks.code == 0, tasks.err
    assert "secret: aiki_push_" in tasks.out and "shown this once" in tasks.out

    shown = await aiki("endpoints", "show", endpoint["id"])
    assert shown.code == 0, shown.err
    for part in (url, "cli-order 1 (pool blue)", endpoint["secrets"][0]["key_id"], "healthy"):
        assert part in shown.out, part
    assert secret not in shown.out
    assert (await aiki("endpoints", "show", endpoint["id"], "--json")).json() == endpoint
    listed = (await aiki("endpoints", "list", "--json")).json()["endpoints"]
    assert [e["kind"] for e in listed] == ["workflows", "tasks"]
    table = await aiki("endpoints", "list")
    assert url in table.out and "cli-charge" in table.out and "aiki_push_" not in table.out

    rotated = await aiki(
        "endpoints", "rotate-secret", endpoint["id"], "--previous-expires-in", "1h", "--json"
    )
    assert [s["expires_at"] is None for s in rotated.json()["endpoint"]["secrets"]] == [True, False]
    assert rotated.json()["secret"] != secret
    assert (await aiki("endpoints", "delete", endpoint["id"])).code == 0
    gone = await aiki("endpoints", "show", endpoint["id"])
    assert gone.code == 3 and "not found" in gone.err

    for bad in (
        ("https://user@orders.example", "--task", "t"),
        ("ftp://orders.example", "--task", "t"),
        ("https://orders.example", "--task", "t", "--max-in-flight", "0"),
        ("https://orders.example",),
        ("https://orders.example", "--task", "t", "--workflow", "cli-order", "1"),
        ("https://orders.example", "--task", "t", "--timeout", "soon"),
    ):
        refused = await aiki("endpoints", "create", *bad)
        assert refused.code == 2, (bad, refused.err)
        assert len(refused.err.strip().splitlines()) == 1, refused.err
    assert len((await aiki("endpoints", "list", "--json")).json()["endpoints"]) == 1


async def test_an_endpoint_url_is_shown_as_text_not_as_markup(server: ServerProcess) -> None:
    # brackets are legal in a URL's path and query, and Rich reads them as markup: a
    # stray closing tag crashed list, show and delete, and an opening one restyled
    aiki = Aiki(server.base_url)
    url = "https://orders.example/a[/b]?x=[red]y"
    created = await aiki("endpoints", "create", url, "--task", "cli-charge")
    assert created.code == 0, created.err
    assert url in created.out
    endpoint_id = (await aiki("endpoints", "list", "--json")).json()["endpoints"][0]["id"]
    for command in (("list",), ("show", endpoint_id), ("delete", endpoint_id)):
        shown = await aiki("endpoints", *command)
        assert shown.code == 0, (command, shown.err)
        assert url in shown.out, (command, shown.out)


async def test_bad_input_exits_with_its_code_and_one_line(
    server: ServerProcess, client: Client, tmp_path: Path
) -> None:
    aiki = Aiki(server.base_url)
    unknown = await aiki("runs", "show", "01JD00000000000000000000ZZ")
    assert (unknown.code, unknown.out) == (3, "")
    assert unknown.err.startswith("aiki: ") and "not found" in unknown.err
    assert (await aiki("runs", "result", "01JD00000000000000000000ZZ")).code == 3
    assert (await aiki("events", "send", "01JD00000000000000000000ZZ", "go")).code == 3

    bad_json = await aiki("runs", "start", "cli-order", "1", "--input", "{not json")
    assert bad_json.code == 2
    assert "not JSON" in bad_json.err
    assert len(bad_json.err.strip().splitlines()) == 1
    missing = await aiki("runs", "start", "cli-order", "1", "--input", f"@{tmp_path / 'none'}")
    assert missing.code == 2
    assert (await aiki("runs", "list", "--status", "sleepy")).code == 2
    assert (await aiki("runs", "start", "cli-order", "1", "--delay", "soon")).code == 2
    assert (await aiki("runs", "start", "cli-order", "1", "--priority", "10")).code == 2
    both = await aiki("schedules", "create", "n", "cli-napper", "1", "--cron", "* * * * *",
                      "--every", "1m")  # fmt: skip
    assert both.code == 2
    # the server refuses it: a workflow name the API does not take
    assert (await aiki("runs", "start", "no spaces allowed", "1")).code == 2
    assert (await client.list_runs()).runs == []  # none of them started a run

    unreachable = await Aiki("http://127.0.0.1:9")("runs", "list")
    assert unreachable.code == 1
    assert len(unreachable.err.strip().splitlines()) == 1


async def test_unreadable_input_files_exit_2_with_one_line(tmp_path: Path) -> None:
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xa4\xff\x00")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    aiki = Aiki("http://127.0.0.1:9")
    for path in (binary, deep):
        done = await aiki("runs", "start", "cli-order", "1", "--input", f"@{path}")
        assert done.code == 2, done.err
        assert done.err.startswith("aiki: ") and len(done.err.strip().splitlines()) == 1


async def test_a_garbled_answer_is_one_line_and_exit_1(tmp_path: Path) -> None:
    async def garbled(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.receive()
            body = b"not json{"
            await stream.send(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, garbled)
            done = await Aiki(f"http://127.0.0.1:{port}")("runs", "list", "--json")
            tg.cancel_scope.cancel()
    assert (done.code, done.out) == (1, "")
    assert done.err.startswith("aiki: ") and len(done.err.strip().splitlines()) == 1


async def test_a_refused_key_exits_4(server: ServerProcess) -> None:
    key = await server.create_api_key("team-a")
    wrong = await Aiki(server.base_url, api_key="aiki_not_a_key")("runs", "list")
    assert wrong.code == 4
    assert wrong.err.startswith("aiki: ") and len(wrong.err.strip().splitlines()) == 1
    assert (await Aiki(server.base_url)("workers", "list")).code == 4  # keys are on: none is 4
    assert (await Aiki(server.base_url, api_key=key.key)("runs", "list", "--json")).json() == {
        "runs": [],
        "next_cursor": None,
    }


async def test_sealed_payloads_are_shown_as_sealed(server: ServerProcess) -> None:
    codec = AesGcmCodec(KeyRing([("k1", b"k" * 32)]))
    async with (
        Client(server.base_url, codec=codec, logger=QUIET) as client,
        Worker(client, VERSIONS, logger=QUIET),
    ):
        handle = await receipt_v1.start(client, 5)
        assert await handle.result(timeout=WAIT) == "receipt for 5"

    shown = await Aiki(server.base_url)("runs", "show", handle.id)
    assert shown.code == 0, shown.err
    assert shown.out.count("sealed (key k1)") == 2  # the input and the result
    assert "aiki:v1:" not in shown.out
    # for scripts, the payloads as stored: sealed envelopes
    detail = (await Aiki(server.base_url)("runs", "show", handle.id, "--json")).json()
    assert detail["input"].startswith("aiki:v1:k1:")
