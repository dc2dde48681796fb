"""The chaos run: real servers, workers and PostgreSQL, killed at random while runs go on.

`run_scenario(plan, directory)` does one run and returns its `Report`:

1. PostgreSQL: a cluster of its own (`initdb` into a temporary directory, owned by
   the `postgres` user when we are root) on a free port, never a shared one; two
   server replicas on it. SQLite: one server on a file.
2. Three worker processes of `chaos_app.py`, spread over the replicas; with two
   replicas, a probe worker attached to replica B only.
3. Probes (PostgreSQL): a `chaos-probe` run started through replica A, the time
   from the start's answer to the probe's ledger line (a cross-replica wake-up).
4. The chaos, for `plan.chaos_seconds`: runs of `chaos-mixed` are started at an
   even pace through alternating replicas, each with its key as reference id (a
   start that fails is tried again, through the other replica: the reference id
   makes that safe), and get their event some time later, the same way. Meanwhile
   the monkey SIGKILLs a random worker every few seconds (and starts another on the
   same replica), SIGKILLs a server replica about every 15 s (and restarts it on
   its port), and crashes PostgreSQL once (`pg_ctl stop -m immediate`, then start).
   After the PostgreSQL restart only replica A is killed, so replica B's
   connections are the ones that lived through it when the probes run again.
5. The drain: every acknowledged run must end within `plan.drain_seconds`.
6. Probes again, then the checks of `chaos_checks` over the files left behind.

Every wait has a deadline (`ChaosError` says which one expired), the whole run has
a budget, and every process is SIGKILLed and PostgreSQL stopped and removed at the
end, whatever happened. The random choices come from `plan.seed`, drawn up front.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import anyio
from chaos_app import (
    PROBE_POOL,
    Order,
    append_line,
    approved,
    event_value,
    expected_result,
    mixed_v1,
    open_append,
    probe_v1,
    recording_client,
)
from chaos_checks import (
    Recovery,
    RerunRules,
    Timeline,
    first_starts,
    five_xx_outside,
    judge_reruns,
    load_http,
    load_ledger,
    millis,
    outage_windows,
    seconds,
    server_recoveries,
    worker_recoveries,
)

from aiki_core import (
    ConsoleLogger,
    LogLevel,
    RunStatus,
    ServerError,
    WorkflowCancelledError,
    WorkflowFailedError,
)
from aiki_core.wire import RUN_TERMINAL_STATUSES
from aiki_server.testing import LoggedProcess, ServerStartError, free_port
from live_processes import LiveProcesses

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from chaos_checks import HttpEvent

    from aiki_client import Client
    from aiki_core import RunId
    from aiki_core.wire import RunPage

T = TypeVar("T")

APP = Path(__file__).with_name("chaos_app.py")
PG_BIN = Path(os.environ.get("AIKI_PG_BIN", "/usr/lib/postgresql/15/bin"))
QUIET = ConsoleLogger(LogLevel.ERROR)
HEALTH_TIMEOUT = 60.0
"""Seconds a (re)started server may take to answer `/health` on a loaded machine."""
PG_TIMEOUT = 60.0
"""Seconds `initdb`, or PostgreSQL's start or crash recovery, may take."""
CALL_TIMEOUT = 60.0
"""Seconds one start or event may take, retries through both replicas included."""
PROBE_TIMEOUT = 10.0
"""Seconds a probe run may take to reach the probe worker."""
FAST_WAKEUP = 0.3
"""A probe picked up faster than this was woken by a notification, not by a re-check."""


class ChaosError(Exception):
    """The chaos run could not go on: a deadline expired or a part could not start."""


@contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Cancel the block after `seconds`; a `ChaosError` naming `what` then."""
    with anyio.move_on_after(seconds) as scope:
        yield
    if scope.cancelled_caught:
        raise ChaosError(f"{what} took more than {seconds:.0f}s")


@dataclass(frozen=True)
class Plan:
    """What one chaos run does; `ci` and `full` are the two sizes the repo runs."""

    database: str
    """`postgresql` (two replicas, a crash of PostgreSQL) or `sqlite` (one server)."""
    runs: int
    chaos_seconds: float
    seed: int = 1
    start_share: float = 0.6
    """Runs are started over this share of the chaos, so the last ones meet some too."""
    worker_kill_gap: tuple[float, float] = (3.0, 6.0)
    server_kill_every: float = 15.0
    first_server_kill: float = 6.0
    pg_restart_share: float = 0.4
    """The PostgreSQL crash comes at this share of the chaos."""
    outage_seconds: float = 0.5
    """A killed server, or crashed PostgreSQL, stays down this long before its restart."""
    claim_idle_timeout: float = 10.0
    """Longer than most server restarts on a loaded machine, so a worker's claims
    usually outlive its server's restart and its re-runs are judged strictly."""
    heartbeat_ms: int = 1000
    workers: int = 3
    max_runs_per_worker: int = 30
    event_delay: tuple[float, float] = (0.2, 3.0)
    grace: float = 3.0
    """Seconds after an outage in which 5xx answers are still expected."""
    ack_grace: float = 1.0
    """Seconds after a task's finish in which its result may still be unacknowledged."""
    drain_seconds: float = 60.0
    probes: int = 6

    @classmethod
    def ci(cls, database: str, seed: int = 1) -> Plan:
        """The bounded run of the test suite: both databases in under 3 minutes."""
        if database == "postgresql":
            return cls(database, runs=40, chaos_seconds=40.0, seed=seed)
        return cls(database, runs=30, chaos_seconds=30.0, seed=seed, probes=0)

    @classmethod
    def full(cls, database: str, seed: int = 1) -> Plan:
        """The full run of the README: a few hundred runs, minutes of chaos."""
        if database == "postgresql":
            return cls(database, runs=300, chaos_seconds=150.0, seed=seed, drain_seconds=120.0)
        return cls(
            database, runs=300, chaos_seconds=150.0, seed=seed, drain_seconds=120.0, probes=0
        )

    @property
    def budget(self) -> float:
        """Seconds the whole run may take, start-up and probes included."""
        return self.chaos_seconds + self.drain_seconds + 150.0


@dataclass
class Report:
    """The figures of one chaos run, and the invariants it broke (with their evidence)."""

    plan: Plan
    directory: Path
    figures: list[tuple[str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def render(self) -> str:
        """The figures as a table, then each failure."""
        plan = self.plan
        lines = [
            f"chaos run on {plan.database} (seed {plan.seed}): {plan.runs} runs,"
            f" {plan.chaos_seconds:.0f} s of chaos; files in {self.directory}"
        ]
        width = max(len(name) for name, _ in self.figures) if self.figures else 0
        lines += [f"  {name.ljust(width)}  {value}" for name, value in self.figures]
        lines.append(f"invariants broken: {len(self.failures)}")
        lines += [f"  - {failure}" for failure in self.failures]
        return "\n".join(lines)


# -- PostgreSQL --------------------------------------------------------------------------


class PgCluster:
    """A PostgreSQL cluster of the chaos run's own, in a temporary directory."""

    def __init__(self, port: int) -> None:
        self.port = port
        # not under pytest's tmp_path: the `postgres` user must reach the directory
        self.root = Path(tempfile.mkdtemp(prefix="aiki-chaos-pg-"))
        self.data = self.root / "data"

    @property
    def url(self) -> str:
        """The URL servers connect to."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    async def create(self) -> None:
        """`initdb` (trust authentication), then start it."""
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        await self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-N")
        await self.start()

    async def start(self) -> None:
        """Start it (after a crash: crash recovery first) and wait until it accepts."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        await self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"),
            "-w", "-t", str(int(PG_TIMEOUT)), "-o", options, "start",
        )  # fmt: skip

    async def crash(self) -> None:
        """`pg_ctl stop -m immediate`: every backend quits at once, no checkpoint."""
        await self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    async def destroy(self) -> None:
        """Stop it if it runs and remove its files."""
        if (self.data / "postmaster.pid").exists():
            with anyio.move_on_after(PG_TIMEOUT):
                await self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def log_text(self) -> str:
        """PostgreSQL's own log."""
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def _run(self, tool: str, *args: str) -> None:
        argv = [str(PG_BIN / tool), *args]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            argv = ["runuser", "-u", "postgres", "--", *argv]
        with deadline(PG_TIMEOUT, f"{tool} {' '.join(args)}"):
            done = await anyio.run_process(argv, check=False, cwd=self.root)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise ChaosError(f"{tool} {' '.join(args)} exited {done.returncode}:\n{output}")


# -- the processes -----------------------------------------------------------------------


@dataclass(eq=False)
class Replica:
    """A server replica: its port stays, its process is replaced on each restart."""

    name: str
    port: int
    client: Client
    process: LoggedProcess | None = None

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        return f"http://127.0.0.1:{self.port}"


@dataclass(eq=False)
class WorkerSlot:
    """One of the workload's workers: its replica stays, its process is replaced."""

    replica: Replica
    process: LoggedProcess


class Chaos:
    """One chaos run in progress: its processes, its timeline, what it acknowledged."""

    def __init__(self, plan: Plan, directory: Path) -> None:
        self.plan = plan
        self.directory = directory
        self.ledger = directory / "ledger"
        self.ledger.mkdir(parents=True)
        (directory / "logs").mkdir()
        self.processes = LiveProcesses(directory / "logs")
        self.rng = random.Random(plan.seed)
        self.timeline = Timeline()
        self._timeline_fd = open_append(directory / "timeline.jsonl")
        self.origin = time.time()
        self.killed: set[int] = set()
        """Pids the driver killed on purpose."""
        self.died: list[str] = []
        """Processes that exited on their own: each one an invariant broken."""
        self.harness_errors: list[str] = []
        self.acknowledged: dict[str, tuple[Order, RunId]] = {}
        """Run key -> (its input, its run id), once a start was answered."""
        self.replicas: list[Replica] = []
        self.slots: list[WorkerSlot] = []
        self.probe_worker: LoggedProcess | None = None
        self.pg: PgCluster | None = None
        self.db_url = ""
        self.outage = anyio.Lock()
        """Held by a server restart and by the PostgreSQL crash: they never overlap, so a
        server never starts while its database is down, and replica B is up (with
        connections of its own) when PostgreSQL crashes."""

    # -- timeline ------------------------------------------------------------------------

    def record(self, kind: str, **fields: object) -> None:
        """Append to the timeline, in memory and on disk."""
        entry: dict[str, object] = {"kind": kind, "t": time.time(), **fields}
        self.timeline.entries.append(entry)
        append_line(self._timeline_fd, entry)

    def at(self, seconds: float) -> float:
        """The wall-clock time of `seconds` after the run's origin."""
        return self.origin + seconds

    async def sleep_until(self, t: float) -> None:
        """Sleep until wall-clock time `t`."""
        await anyio.sleep(max(0.0, t - time.time()))

    # -- processes -----------------------------------------------------------------------

    async def start_server(self, replica: Replica) -> None:
        """Start (or restart) `replica` on its port; return once `/health` answers."""
        try:
            process = await self.processes.start_server(
                self.db_url,
                "--claim-idle-timeout",
                str(self.plan.claim_idle_timeout),
                port=replica.port,
                name=f"server-{replica.name}",
                startup_timeout=HEALTH_TIMEOUT,
            )
        except ServerStartError as exc:
            raise ChaosError(f"server {replica.name}: {exc}") from None
        replica.process = process
        self.record("server_up", replica=replica.name, url=replica.url, pid=process.pid)

    async def start_worker(self, replica: Replica, *, probe: bool = False) -> LoggedProcess:
        """A worker process of `chaos_app.py` attached to `replica`."""
        argv = [
            sys.executable, str(APP), "--url", replica.url, "--ledger", str(self.ledger),
            "--http-log", str(self.directory / f"http-worker-{len(self.processes.started)}.jsonl"),
            "--heartbeat-ms", str(self.plan.heartbeat_ms),
            "--max-runs", str(self.plan.max_runs_per_worker),
        ]  # fmt: skip
        if probe:
            argv.append("--probe")
        process = await self.processes.spawn("probe-worker" if probe else "worker", argv)
        kind = "probe_worker_start" if probe else "worker_start"
        self.record(kind, pid=process.pid, url=replica.url, replica=replica.name)
        return process

    async def wait_ready(self, process: LoggedProcess) -> None:
        """Wait until a worker process got through its imports (its ledger file exists)."""
        with deadline(HEALTH_TIMEOUT, f"the start of worker {process.pid}"):
            while not (self.ledger / f"ledger-{process.pid}.jsonl").exists():
                if process.returncode is not None:
                    raise ChaosError(f"worker exited at start:\n{process.log_text()}")
                await anyio.sleep(0.05)

    async def kill(self, process: LoggedProcess) -> None:
        """SIGKILL a process on purpose and reap it."""
        self.killed.add(process.pid)
        process.kill()
        await process.wait()

    # -- calls through either replica ----------------------------------------------------

    async def through_any(self, first: int, call: Callable[[Client], Awaitable[T]]) -> T:
        """`call` through replica `first`, then the others in turn until one answers.

        Only an outage is tried again (a request that could not be carried, a 5xx):
        any other error is the engine's answer and goes to the caller.
        """
        delay = 0.05
        with deadline(CALL_TIMEOUT, "a call through either replica"):
            for attempt in itertools.count():
                replica = self.replicas[(first + attempt) % len(self.replicas)]
                try:
                    return await call(replica.client)
                except ServerError:
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    # -- the workload --------------------------------------------------------------------

    async def lifecycle(self, index: int, start_at: float, event_after: float) -> None:
        """Start run `index`, then send its event: both through either replica."""
        await self.sleep_until(start_at)
        order = Order(key=f"{self.plan.database}-{index:04d}", n=index + 1)
        try:
            handle = await self.through_any(
                index, lambda c: mixed_v1.start(c, order, reference_id=order.key)
            )
            self.acknowledged[order.key] = (order, handle.id)
            await anyio.sleep(event_after)
            await self.through_any(
                index + 1,
                lambda c: c.run_handle(handle.id).send_event(
                    approved, event_value(order.n), reference_id=f"approve-{order.key}"
                ),
            )
        except Exception as exc:
            self.harness_errors.append(f"run {order.key}: {type(exc).__name__}: {exc}")

    async def load(self) -> None:
        """Start every run, at an even pace over the first part of the chaos."""
        spacing = self.plan.chaos_seconds * self.plan.start_share / self.plan.runs
        delays = [self.rng.uniform(*self.plan.event_delay) for _ in range(self.plan.runs)]
        async with anyio.create_task_group() as group:
            for index in range(self.plan.runs):
                group.start_soon(self.lifecycle, index, self.at(index * spacing), delays[index])

    # -- the monkey ----------------------------------------------------------------------

    def worker_kills(self) -> list[tuple[float, int]]:
        """(seconds after the origin, slot index) of every worker kill."""
        kills = []
        at = self.rng.uniform(*self.plan.worker_kill_gap)
        while at < self.plan.chaos_seconds - 1:
            kills.append((at, self.rng.randrange(len(self.slots))))
            at += self.rng.uniform(*self.plan.worker_kill_gap)
        return kills

    def pg_restart_time(self) -> float | None:
        """Seconds after the origin of the PostgreSQL crash (None on SQLite)."""
        if self.pg is None:
            return None
        return self.plan.chaos_seconds * self.plan.pg_restart_share

    def server_kills(self) -> list[tuple[float, Replica]]:
        """(seconds after the origin, replica) of every server kill.

        None within 6 s of the PostgreSQL crash (and `outage` keeps a server's restart
        and the crash apart), and only replica A's after it: replica B keeps the
        connections that lived through the crash, for the probes.
        """
        pg_at = self.pg_restart_time()
        kills = []
        at = self.plan.first_server_kill + self.rng.uniform(-1, 1)
        turn = 1
        while at < self.plan.chaos_seconds - 3:
            if pg_at is not None and abs(at - pg_at) < 6:
                at = pg_at + 6
            after_pg = pg_at is not None and at > pg_at
            replica = self.replicas[0 if after_pg else turn % len(self.replicas)]
            kills.append((at, replica))
            turn += 1
            at += self.plan.server_kill_every + self.rng.uniform(-2, 2)
        return kills

    async def kill_workers(self, kills: list[tuple[float, int]]) -> None:
        """SIGKILL a worker at each planned time; start another on its replica."""
        for at, index in kills:
            await self.sleep_until(self.at(at))
            slot = self.slots[index]
            victim = slot.process
            if victim.returncode is not None:
                continue  # died on its own: the supervisor replaces it
            await self.kill(victim)
            self.record("worker_kill", pid=victim.pid, url=slot.replica.url)
            slot.process = await self.start_worker(slot.replica)

    async def kill_servers(self, kills: list[tuple[float, Replica]]) -> None:
        """SIGKILL a replica at each planned time; restart it on its port."""
        for at, replica in kills:
            await self.sleep_until(self.at(at))
            async with self.outage:
                victim = replica.process
                if victim is None or victim.returncode is not None:
                    continue
                await self.kill(victim)
                self.record("server_kill", replica=replica.name, url=replica.url, pid=victim.pid)
                await anyio.sleep(self.plan.outage_seconds)
                await self.start_server(replica)

    async def restart_postgres(self, at: float) -> None:
        """Crash PostgreSQL at `at`, keep it down a moment, start it (crash recovery)."""
        assert self.pg is not None
        await self.sleep_until(self.at(at))
        async with self.outage:
            self.record("pg_stop")
            await self.pg.crash()
            await anyio.sleep(self.plan.outage_seconds)
            await self.pg.start()
            self.record("pg_ready")

    async def supervise(self) -> None:
        """Replace any process that exited without being killed, and say so."""
        while True:
            await anyio.sleep(0.5)
            for replica in self.replicas:
                process = replica.process
                if process is not None and process.returncode is not None:
                    if process.pid not in self.killed:
                        self.killed.add(process.pid)
                        self.died.append(self._died(f"server {replica.name}", process))
                        async with self.outage:
                            await self.start_server(replica)
            for slot in self.slots:
                process = slot.process
                if process.returncode is not None and process.pid not in self.killed:
                    self.killed.add(process.pid)
                    self.died.append(self._died("worker", process))
                    slot.process = await self.start_worker(slot.replica)
            probe = self.probe_worker
            if probe is not None and probe.returncode is not None:
                self.died.append(self._died("probe worker", probe))
                self.probe_worker = await self.start_worker(self.replicas[1], probe=True)

    def _died(self, what: str, process: LoggedProcess) -> str:
        self.record("died", pid=process.pid, what=what, exit=process.returncode)
        tail = "\n      ".join(process.log_text().splitlines()[-15:])
        return (
            f"{what} (pid {process.pid}) exited on its own with {process.returncode};"
            f" the end of its log {process.log.name}:\n      {tail}"
        )

    # -- probes and the drain ------------------------------------------------------------

    async def probe(self, phase: str) -> list[float]:
        """Cross-replica wake-ups: a probe started through A, served by a worker on B."""
        if self.probe_worker is None or self.plan.probes == 0:
            return []
        path = self.ledger / f"ledger-{self.probe_worker.pid}.jsonl"
        latencies = []
        for index in range(self.plan.probes + 1):  # the first one only warms up
            key = f"probe-{phase}-{index}"
            handle = await probe_v1.start(
                self.replicas[0].client, key, reference_id=key, pool=PROBE_POOL
            )
            answered = time.time()
            # the first probe also waits for the probe worker's first claim
            with deadline(PROBE_TIMEOUT if index else HEALTH_TIMEOUT, f"probe {key}"):
                while (reached := first_starts(path).get(key)) is None:  # noqa: ASYNC110
                    await anyio.sleep(0.005)
                await handle.result()
            if index:
                latencies.append(reached - answered)
            await anyio.sleep(self.rng.uniform(0.2, 0.7))
        return latencies

    async def drain(self) -> float:
        """Wait until every acknowledged run ended; the seconds it took after the chaos."""
        started = time.time()
        with anyio.move_on_after(self.plan.drain_seconds):
            while True:
                page = await self.through_any(
                    0,
                    lambda c: c.list_runs(
                        workflow=mixed_v1.workflow,
                        status=[s for s in RunStatus if s not in RUN_TERMINAL_STATUSES],
                        limit=1,
                    ),
                )
                if not page.runs:
                    break
                await anyio.sleep(0.5)
        return time.time() - started

    async def outcomes(self) -> dict[str, tuple[RunStatus, str | None]]:
        """Run key -> its status and, once it ended, its result (or error)."""
        found = {}
        for key, (_, run_id) in self.acknowledged.items():
            found[key] = await self.through_any(0, partial(_outcome, run_id=run_id))
        return found

    async def runs_held(self) -> int:
        """How many runs of the workload the server holds."""
        total = 0
        cursor: str | None = None
        while True:
            page = await self.through_any(0, partial(_page, cursor=cursor))
            total += len(page.runs)
            cursor = page.next_cursor
            if cursor is None:
                return total


async def _page(client: Client, cursor: str | None) -> RunPage:
    return await client.list_runs(workflow=mixed_v1.workflow, limit=500, cursor=cursor)


async def _outcome(client: Client, run_id: RunId) -> tuple[RunStatus, str | None]:
    handle = client.run_handle(run_id, mixed_v1.decode_result)
    status = await handle.status()
    if status not in RUN_TERMINAL_STATUSES:
        return status, None
    try:
        return status, await handle.result()
    except (WorkflowFailedError, WorkflowCancelledError) as ended:
        return status, str(ended)


# -- one run -----------------------------------------------------------------------------


async def run_scenario(plan: Plan, directory: Path) -> Report:
    """Run the chaos of `plan` with its files under `directory`; its report."""
    chaos = Chaos(plan, directory)
    try:
        with deadline(plan.budget, "the whole chaos run"):
            return await _run(chaos)
    finally:
        with anyio.CancelScope(shield=True):
            await chaos.processes.aclose()
            for replica in chaos.replicas:
                await replica.client.aclose()
            if chaos.pg is not None:
                (directory / "postgres.log").write_text(chaos.pg.log_text())
                await chaos.pg.destroy()


async def _run(chaos: Chaos) -> Report:
    plan = chaos.plan
    names = ["A", "B"] if plan.database == "postgresql" else ["A"]
    if plan.database == "postgresql":
        chaos.pg = PgCluster(free_port())
        await chaos.pg.create()
        chaos.db_url = chaos.pg.url
    else:
        chaos.db_url = f"sqlite:///{chaos.directory / 'aiki.db'}"
    for name in names:
        port = free_port()
        client = recording_client(
            f"http://127.0.0.1:{port}",
            "driver",
            chaos.directory / f"http-driver-{name}.jsonl",
            QUIET,
        )
        chaos.replicas.append(Replica(name, port, client))
    for replica in chaos.replicas:  # one after the other: the first one migrates
        await chaos.start_server(replica)
    for index in range(plan.workers):
        replica = chaos.replicas[index % len(chaos.replicas)]
        chaos.slots.append(WorkerSlot(replica, await chaos.start_worker(replica)))
    if len(chaos.replicas) > 1:
        chaos.probe_worker = await chaos.start_worker(chaos.replicas[1], probe=True)
    for process in [slot.process for slot in chaos.slots] + [chaos.probe_worker]:
        if process is not None:
            await chaos.wait_ready(process)

    before = await chaos.probe("before")
    chaos.origin = time.time()
    chaos.record("chaos_start")
    worker_kills = chaos.worker_kills()
    server_kills = chaos.server_kills()
    pg_at = chaos.pg_restart_time()
    async with anyio.create_task_group() as outer:
        outer.start_soon(chaos.supervise)
        async with anyio.create_task_group() as group:
            group.start_soon(chaos.load)
            group.start_soon(chaos.kill_workers, worker_kills)
            group.start_soon(chaos.kill_servers, server_kills)
            if pg_at is not None:
                group.start_soon(chaos.restart_postgres, pg_at)
        await chaos.sleep_until(chaos.at(plan.chaos_seconds))
        chaos.record("chaos_end")
        drained = await chaos.drain()
        chaos.record("drained")
        after = await chaos.probe("after")
        outer.cancel_scope.cancel()
    outcomes = await chaos.outcomes()
    held = await chaos.runs_held()
    return _report(chaos, outcomes, held, drained, before, after)


def _report(
    chaos: Chaos,
    outcomes: dict[str, tuple[RunStatus, str | None]],
    held: int,
    drained: float,
    before: list[float],
    after: list[float],
) -> Report:
    plan = chaos.plan
    report = Report(plan, chaos.directory)
    figure = report.figures.append
    fail = report.failures.append
    origin = chaos.origin
    now = time.time()

    acknowledged = len(chaos.acknowledged)
    right = wrong = ended_badly = stuck = 0
    for key, (status, result) in sorted(outcomes.items()):
        order, run_id = chaos.acknowledged[key]
        if status is RunStatus.COMPLETED and result == expected_result(order):
            right += 1
        elif status is RunStatus.COMPLETED:
            wrong += 1
            fail(f"run {run_id} ({key}) completed with {result!r}, not {expected_result(order)!r}")
        elif status in RUN_TERMINAL_STATUSES:
            ended_badly += 1
            fail(f"run {run_id} ({key}) ended {status.value}: {result}")
        else:
            stuck += 1
            fail(f"run {run_id} ({key}) is stuck {status.value} {plan.drain_seconds:.0f}s after")
    figure(("runs acknowledged", str(acknowledged)))
    figure(("runs completed with the right result", str(right)))
    figure(("runs completed with a wrong result", str(wrong)))
    figure(("runs failed or cancelled", str(ended_badly)))
    figure(("runs stuck (not ended after the drain)", str(stuck)))
    figure(("runs the server holds", str(held)))
    figure(("drain after the chaos (s)", f"{drained:.1f}"))
    if acknowledged != plan.runs:
        fail(f"{plan.runs - acknowledged} of {plan.runs} starts were never acknowledged")
    if held != acknowledged:
        fail(f"the server holds {held} runs of the workload, {acknowledged} were acknowledged")
    report.failures.extend(chaos.harness_errors)
    report.failures.extend(chaos.died)

    executions, torn = load_ledger(chaos.ledger)
    windows = outage_windows(chaos.timeline, plan.grace, now)
    http, gaps = load_http(chaos.directory)
    # a heartbeat may take a second to reach a loaded server
    rules = RerunRules(ack_grace=plan.ack_grace, cut_off=plan.claim_idle_timeout - 1.0)
    reruns = judge_reruns(executions, chaos.timeline, windows, gaps, rules, origin=origin)
    workload = [e for e in executions if not e.task.startswith("chaos-probe")]
    figure(("task executions (ledger)", f"{len(workload)} ({torn} torn lines)"))
    figure(("re-runs excused (in flight at its worker's kill)", str(reruns.excused)))
    figure(("re-runs excused (worker cut off for a claim's life)", str(reruns.cut_off)))
    figure(("in-flight executions given up by a live worker", str(reruns.abandoned)))
    figure(("completed tasks executed twice", str(len(reruns.violations))))
    figure(("  of them while their first worker lived", str(reruns.by_live_worker)))
    report.failures.extend(reruns.violations)

    outside = five_xx_outside(http, windows)
    five_xx = [e for e in http if e.status is not None]
    not_503 = [e for e in five_xx if e.status != 503]
    figure(("5xx seen by clients (driver + workers)", str(len(five_xx))))
    figure(("5xx outside the outage windows", str(len(outside))))
    figure(("  of them other than 503", str(len(not_503))))
    figure(("requests that could not be carried", str(sum(e.status is None for e in http))))
    if not_503:
        fail(
            f"{len(not_503)} answers of an outage were not 503 (a database outage is a 503"
            f" with Retry-After); the first: {_http_line(not_503[0], origin)}"
        )
    for e in outside:
        fail(f"a 5xx outside any outage: {_http_line(e, origin)}")

    worker = worker_recoveries(executions, chaos.timeline)
    figure(("worker kills", str(len(worker))))
    figure(
        (
            "  runs in flight at a kill / kill",
            f"{statistics.mean(r.held for r in worker):.1f}" if worker else "-",
        )
    )
    figure(("  recovery: their runs moved again (s)", seconds(r.progress for r in worker)))
    servers = server_recoveries(executions, chaos.timeline)
    for recovery in servers:
        figure(_server_figure(recovery, origin))
    figure(("cross-replica wake-up before PG restart (ms)", millis(before)))
    figure(("cross-replica wake-up after PG restart (ms)", millis(after)))
    for phase, latencies in (("before", before), ("after", after)):
        slow = [v for v in latencies if v >= FAST_WAKEUP]
        if len(slow) * 3 > len(latencies):
            fail(
                f"cross-replica wake-ups {phase} the PostgreSQL restart: {len(slow)} of"
                f" {len(latencies)} probes took {FAST_WAKEUP * 1000:.0f} ms or more"
                f" ({millis(latencies)}): the replica was not notified, it re-checked"
            )
    return report


def _http_line(e: HttpEvent, origin: float) -> str:
    return (
        f"{e.status} to {e.role} pid {e.pid} at {e.t - origin:.2f}s:"
        f" {e.method} {e.url}{e.path}: {e.text[:200]}"
    )


def _server_figure(recovery: Recovery, origin: float) -> tuple[str, str]:
    back = "-" if recovery.back is None else f"{recovery.back:.1f}"
    progress = "-" if recovery.progress is None else f"{recovery.progress:.1f}"
    return (
        f"{recovery.what} killed at {recovery.at - origin:.1f}s",
        f"answers again after {back} s; its workers' next task start after {progress} s",
    )
