"""HTTP helpers shared by the server's tests: start, claim, transition and read runs.

Each helper asserts what every caller relies on (a start is a 201 that created its
run, a claim or a read is a 200, a wire error has exactly the documented shape) and
returns the part of the body the tests look at. The clients are those of the
`server`, `harness` and `make_harness` fixtures of conftest.py, rooted at `/api/v1`.

Importable as `server_api` because pytest and mypy put this directory on their paths
(`pythonpath` and `mypy_path` in the root pyproject.toml); conftest.py itself cannot
be imported under `--import-mode=importlib`, so the fixtures' types are restated here
as protocols.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import httpx

from aiki_server import ServerSettings, create_app
from aiki_server._api_keys import create_key
from aiki_server._storage._postgres import PostgresTx
from aiki_server._storage._sqlite import SqliteTx, _ThreadedSqliteTx
from aiki_server.testing import serving

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

    import pytest
    from fastapi import FastAPI

    from aiki_server._api_keys import ApiKey
    from aiki_server._storage._database import Tx
    from aiki_server._timers import TimerDaemon

FAR_FUTURE = "2100-01-01T00:00:00Z"
"""A moment no test reaches: a sleep until then never wakes by itself."""

START_MS = 1_800_000_000_000
"""Where the harness's manual clock starts (epoch milliseconds)."""


# -- the fixtures' types ------------------------------------------------------------------


class Clock(Protocol):
    """The harness's manual clock: epoch milliseconds that move only when told."""

    now: int

    def advance(self, ms: int) -> None:
        """Move the clock forward by `ms` without waking the timer daemon."""


class Harness(Protocol):
    """The `harness` fixture of conftest.py: an app on a manual clock."""

    @property
    def client(self) -> httpx.AsyncClient:
        """An HTTP client on the app."""

    @property
    def app(self) -> FastAPI:
        """The app, its lifespan running."""

    @property
    def clock(self) -> Clock:
        """The app's clock."""

    def advance(self, ms: int) -> None:
        """Move the clock forward and let the timer daemon look at once."""


HarnessFactory = Callable[..., AbstractAsyncContextManager[Harness]]
"""The `make_harness` fixture: `async with make_harness(**settings) as h`."""


# -- values --------------------------------------------------------------------------------


def iso(ms: int) -> str:
    """Epoch milliseconds as an ISO 8601 UTC timestamp (`...Z`)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def error_of(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert `r` is exactly the wire error `code` with `status`; its details."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    details = body["error"]["details"]
    assert isinstance(details, dict)
    return details


# -- API keys ------------------------------------------------------------------------------


async def new_key(app: FastAPI, namespace: str) -> ApiKey:
    """A new API key of `namespace`, written straight to the app's database."""
    return await create_key(app.state.db, namespace, START_MS)


@asynccontextmanager
async def client_with(app: FastAPI, key: str | None) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on `app` (rooted at `/api/v1`) sending `key` as its bearer token."""
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://aiki/api/v1", headers=headers
    ) as client:
        yield client


# -- requests ------------------------------------------------------------------------------


async def start(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    """Start a new run (workflow `w`, version `1` unless given); its summary."""
    r = await client.post("/runs", json={"workflow": "w", "version": "1", **fields})
    assert r.status_code == 201, r.text
    assert r.json()["created"] is True
    run: dict[str, Any] = r.json()["run"]
    return run


async def create_schedule(
    client: httpx.AsyncClient, name: str = "nightly", *, status: int = 201, **fields: Any
) -> dict[str, Any]:
    """Create schedule `name` of workflow `w`, every 10 s unless given; its answer (`status`)."""
    body = {"name": name, "workflow": "w", "version": "1", "every": 10_000, **fields}
    r = await client.post("/schedules", json=body)
    assert r.status_code == status, r.text
    schedule: dict[str, Any] = r.json()
    return schedule


async def get_schedule(client: httpx.AsyncClient, schedule_id: str) -> dict[str, Any]:
    """The schedule, which must exist."""
    r = await client.get(f"/schedules/{schedule_id}")
    assert r.status_code == 200, r.text
    schedule: dict[str, Any] = r.json()
    return schedule


def task_record(revision: int, **fields: Any) -> dict[str, Any]:
    """The body of a completed attempt of task `charge` (result 7), with `fields` changed."""
    return {
        "revision": revision,
        "name": "charge",
        "address": "charge:1",
        "occurrence": 0,
        "attempt": 1,
        "status": "completed",
        "result": 7,
        **fields,
    }


async def claim(
    client: httpx.AsyncClient,
    workflow: str = "w",
    version: str = "1",
    *,
    pool: str = "default",
    worker_id: str = "worker-1",
    max_runs: int = 1,
    wait_ms: int = 0,
    capabilities: Sequence[Mapping[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """Claim as `worker_id`; the claimed runs.

    The worker declares `capabilities`, else the one triple (`workflow`, `version`,
    `pool`). It does not wait unless `wait_ms` is given: under the manual clock a
    long-poll's deadline would never come.
    """
    if capabilities is None:
        capabilities = [{"workflow": workflow, "version": version, "pool": pool}]
    r = await client.post(
        "/claims",
        json={
            "worker_id": worker_id,
            "capabilities": list(capabilities),
            "max_runs": max_runs,
            "wait": wait_ms,
        },
    )
    assert r.status_code == 200, r.text
    runs: list[dict[str, Any]] = r.json()["runs"]
    return runs


async def claim_one(
    client: httpx.AsyncClient, workflow: str = "w", version: str = "1", **options: Any
) -> dict[str, Any]:
    """Claim exactly one run (`options` as for `claim`); the claimed run (summary under `run`)."""
    runs = await claim(client, workflow, version, **options)
    assert len(runs) == 1, runs
    return runs[0]


async def transition(
    client: httpx.AsyncClient, run_id: str, revision: int, action: dict[str, Any]
) -> httpx.Response:
    """Apply a worker action to a claimed run (no assertion: callers check the answer)."""
    return await client.post(
        f"/runs/{run_id}/transition", json={"revision": revision, "action": action}
    )


async def get_run(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    """The run's detail."""
    r = await client.get(f"/runs/{run_id}")
    assert r.status_code == 200, r.text
    run: dict[str, Any] = r.json()
    return run


async def wait_status(client: httpx.AsyncClient, run_id: str, status: str) -> dict[str, Any]:
    """Long-poll until the run reaches `status` (bounded in wall time: the clock may be manual)."""
    with anyio.fail_after(5):
        while True:
            r = await client.get(
                f"/runs/{run_id}/wait", params={"status": status, "timeout_ms": 2000}
            )
            assert r.status_code == 200, r.text
            run: dict[str, Any] = r.json()
            if run["status"] == status:
                return run


async def timer_pass(h: Harness) -> None:
    """One pass of the timer daemon at the manual clock's time, finished before returning."""
    timers: TimerDaemon = h.app.state.timers
    await timers.run_once()


# -- statements --------------------------------------------------------------------------


_recorded_here: ContextVar[bool] = ContextVar("_recorded_here", default=False)


def record_statements(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    """From now on, every statement a transaction or read session sends on behalf of the
    caller's task and the tasks it starts: (SQL, values).

    A replica's timer and retention passes run in tasks started before, so the statements
    they happen to send meanwhile are not counted.
    """
    _recorded_here.set(True)
    sent: list[tuple[str, tuple[Any, ...]]] = []
    for cls in (PostgresTx, SqliteTx, _ThreadedSqliteTx):
        for name in ("fetch", "execute"):
            if name in vars(cls):
                monkeypatch.setattr(cls, name, _recording(getattr(cls, name), sent))
    return sent


def _recording(
    method: Callable[..., Any], sent: list[tuple[str, tuple[Any, ...]]]
) -> Callable[..., Any]:
    async def recorded(tx: Tx, sql: str, *args: Any) -> Any:
        if _recorded_here.get():
            sent.append((sql, args))
        return await method(tx, sql, *args)

    return recorded


async def plan(tx: Tx, sql: str, *args: Any) -> str:
    """The database's plan of a statement, as one text (indexes by name)."""
    if isinstance(tx, SqliteTx):
        rows = await tx.fetch(f"EXPLAIN QUERY PLAN {sql}", *args)
        return "\n".join(str(row["detail"]) for row in rows)
    await tx.execute("SET LOCAL enable_seqscan = off")  # a small table: would an index do?
    rows = await tx.fetch(f"EXPLAIN {sql}", *args)
    return "\n".join(str(value) for row in rows for value in row.values())


# -- the server's log ---------------------------------------------------------------------


@asynccontextmanager
async def app_client(url: str) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """A live app on `url` (wall clock) and a client on it that sees 5xx answers as answers.

    The client addresses the app by a loopback name, which an open server answers.
    """
    app = create_app(url, ServerSettings())
    async with (
        serving(app),
        httpx.AsyncClient(transport=asgi(app), base_url="http://127.0.0.1/api/v1") as client,
    ):
        yield app, client


def failed_requests(log: str) -> list[dict[str, Any]]:
    """The metadata of each "request failed" line of the server's log."""
    found = []
    for line in log.splitlines():
        if " ERROR request failed " in line:
            pairs = line.split(" request failed ", 1)[1]
            found.append(
                {
                    key: json.loads(value)
                    for key, value in (pair.split("=", 1) for pair in _pairs(pairs))
                }
            )
    return found


def _pairs(text: str) -> list[str]:
    """Split `k=<json> k=<json>` (JSON strings may hold spaces)."""
    decoder = json.JSONDecoder()
    pairs, at = [], 0
    while at < len(text):
        key_end = text.index("=", at)
        _, end = decoder.raw_decode(text, key_end + 1)
        pairs.append(text[at:end])
        at = end + 1
    return pairs


def asgi(app: FastAPI) -> httpx.ASGITransport:
    """A transport into `app`: a 5xx is an answer, never an exception raised into the test."""
    return httpx.ASGITransport(app=app, raise_app_exceptions=False)


async def until_waiting(h: Harness, count: int) -> None:
    """Until `count` subscriptions wait on the app's wake-up hub (a long-poll is waiting)."""
    with anyio.fail_after(10):
        while h.app.state.hub.waiting < count:  # noqa: ASYNC110 - the hub has no event for it
            await anyio.sleep(0.01)
