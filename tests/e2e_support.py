"""What the end-to-end tests share: worker processes of `e2e_app.py`, and its counters."""

from __future__ import annotations

import json
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from aiki_client import Client
from aiki_core import ConsoleLogger, LogLevel, TaskStatus
from aiki_server._notify import WakeHub
from aiki_server._storage._open import open_database
from aiki_server.testing import free_port
from e2e_app import step_counter

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from aiki_core import PayloadCodec, RunId
    from aiki_core.wire import RunDetail
    from aiki_server._storage._database import Database
    from aiki_server.testing import LoggedProcess, ServerProcess
    from live_processes import LiveProcesses

E2E_APP = Path(__file__).with_name("e2e_app.py")

QUIET = ConsoleLogger(LogLevel.WARN)
"""The logger of the tests' own clients."""


@dataclass(frozen=True)
class Execution:
    """One line of a counter file: which process ran the task body, and when."""

    pid: int
    at: float


@dataclass(frozen=True)
class Counters:
    """The counter files the worker processes write: one line per task body executed."""

    directory: Path

    def executions(self, name: str) -> list[Execution]:
        """Every execution of the body counted as `name`, oldest first."""
        path = self.directory / f"{name}.count"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            pid, at = line.split()
            out.append(Execution(int(pid), float(at)))
        return out

    def count(self, name: str) -> int:
        """How often the body counted as `name` ran."""
        return len(self.executions(name))

    def counts(self, prefix: str = "") -> dict[str, int]:
        """Name -> executions, for every counter whose name starts with `prefix`."""
        return {
            path.name.removesuffix(".count"): len(path.read_text().splitlines())
            for path in sorted(self.directory.glob(f"{prefix}*.count"))
        }

    async def wait_for_total(self, prefix: str, total: int, *, timeout: float) -> None:
        """Wait until the counters starting with `prefix` hold `total` lines together."""
        with anyio.fail_after(timeout):
            while sum(self.counts(prefix).values()) < total:  # noqa: ASYNC110 - files, no event
                await anyio.sleep(0.005)


async def start_worker(
    processes: LiveProcesses,
    server_url: str,
    counters: Counters,
    *,
    heartbeat_ms: int = 1000,
    task_delay_ms: int = 0,
    max_backoff_ms: int = 200,
    api_key: str | None = None,
    env: Mapping[str, str] | None = None,
) -> LoggedProcess:
    """A worker process running every version of `e2e_app.py` against `server_url`.

    It need not wait for the server: until the server answers, it backs off for up
    to `max_backoff_ms` between tries. With `api_key`, its client sends that key;
    `env` adds to its environment (`AIKI_KEYS`).
    """
    counters.directory.mkdir(parents=True, exist_ok=True)
    key_args = [] if api_key is None else ["--api-key", api_key]
    return await processes.spawn(
        "worker",
        [
            sys.executable,
            str(E2E_APP),
            "--url",
            server_url,
            "--counters",
            str(counters.directory),
            "--heartbeat-ms",
            str(heartbeat_ms),
            "--task-delay-ms",
            str(task_delay_ms),
            "--max-backoff-ms",
            str(max_backoff_ms),
            *key_args,
        ],
        env=env,
    )


@dataclass
class Stack:
    """A server process, a worker process on it, and a client of the test."""

    server: ServerProcess
    worker: LoggedProcess
    client: Client
    counters: Counters


@asynccontextmanager
async def open_stack(
    db_url: str,
    processes: LiveProcesses,
    tmp_path: Path,
    *,
    heartbeat_ms: int = 1000,
    codec: PayloadCodec | None = None,
    worker_env: Mapping[str, str] | None = None,
) -> AsyncIterator[Stack]:
    """A fresh server on `db_url` with one worker process (heartbeating so often), a client.

    The client uses `codec`; the worker gets `worker_env` (`AIKI_KEYS` for the same codec).
    """
    # both processes start at once: the worker retries until the server listens
    port = free_port()
    counters = Counters(tmp_path / "counters")
    url = f"http://127.0.0.1:{port}"
    worker = await start_worker(processes, url, counters, heartbeat_ms=heartbeat_ms, env=worker_env)
    server = await processes.start_server(db_url, port=port)
    async with Client(server.base_url, codec=codec, logger=QUIET) as client:
        yield Stack(server, worker, client, counters)
    assert worker.returncode is None, "the worker process died"


def completed_steps(detail: RunDetail) -> set[str]:
    """The step counters of the twenty-step run whose task is recorded as completed."""
    return {
        step_counter(_index(task.input))
        for task in detail.tasks
        if task.name == "step" and task.status is TaskStatus.COMPLETED
    }


@asynccontextmanager
async def database(db_url: str) -> AsyncIterator[Database]:
    """The database at `db_url`, opened by the test itself (a server may run on it too)."""
    db = open_database(db_url, WakeHub())
    await db.open()
    try:
        yield db
    finally:
        await db.close()


async def completed_steps_in_database(db_url: str, run_id: RunId) -> set[str]:
    """`completed_steps`, read from the database itself (while no server runs)."""
    async with database(db_url) as db, db.reader() as tx:
        rows = await tx.fetch(
            "SELECT input FROM tasks WHERE run_id = $1 AND name = 'step' AND status = $2",
            run_id,
            TaskStatus.COMPLETED.value,
        )
    return {step_counter(_index(json.loads(row["input"]))) for row in rows}


def _index(step_input: object) -> int:
    assert isinstance(step_input, dict), step_input
    index = step_input["index"]
    assert isinstance(index, int), step_input
    return index


def check_exactly_once(
    final: dict[str, int], steps: int, completed_at_crash: set[str], started_at_crash: set[str]
) -> None:
    """The promise of a crash: recorded work never runs again; at most the one in flight does.

    `final` maps each step counter to its executions once the run completed; the
    sets say which steps were recorded as completed, and which had started, at the
    crash.
    """
    everything = {step_counter(i) for i in range(1, steps + 1)}
    assert set(final) == everything, f"steps that never ran: {everything - set(final)}"
    ran_again = {name for name in completed_at_crash if final[name] != 1}
    assert not ran_again, f"steps recorded before the crash ran again: {final}"
    in_flight = started_at_crash - completed_at_crash
    assert len(in_flight) <= 1, f"more than one step in flight at the crash: {in_flight}"
    twice = {name for name, n in final.items() if n == 2}
    assert twice <= in_flight, f"only the step in flight may run twice: {twice}, {final}"
    assert max(final.values()) <= 2, final
