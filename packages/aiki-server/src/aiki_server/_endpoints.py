"""Push delivery's endpoints: their rows, as the dispatcher and the API read them.

An endpoint is a URL of one namespace the server pushes work to: claimed runs of its
(workflow, version, pool) triples (kind `workflows`), or attempts of its tasks (kind
`tasks`). Its signing secrets are kept in clear, newest first: the server signs every
push with each one still unexpired (see `aiki_core.push`), which a hash of them could
not do. A rotation puts a new secret first and gives the previous one an expiry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from aiki_core import NotFoundError
from aiki_core.push import PushSecret
from aiki_core.wire import (
    CreateEndpointResponse,
    EndpointInfo,
    EndpointPage,
    EndpointSecretInfo,
    EndpointStatus,
    RotateEndpointSecretResponse,
    WorkflowCapability,
    from_millis,
    to_millis,
)
from aiki_core.wire import (
    EndpointKind as EndpointKind,  # the dispatcher's too
)
from aiki_server._clock import from_ms
from aiki_server._rows import new_id

if TYPE_CHECKING:
    from aiki_core.wire import CreateEndpointRequest, RotateEndpointSecretRequest
    from aiki_server._clock import Clock
    from aiki_server._storage._database import Database, Row, Tx

CIRCUIT_OPENS_AFTER = 5
"""Consecutive failed pushes after which an endpoint's circuit is open."""

ENDPOINT_COLUMNS = (
    "id, namespace, url, kind, serves, max_in_flight, timeout_ms, secrets, created_at,"
    " failures, failing_since, last_error, retry_at"
)


@dataclass(frozen=True, slots=True)
class StoredSecret:
    """One secret of an endpoint as stored: `expires_at` (epoch ms) `None` while current."""

    secret: str = field(repr=False)
    expires_at: int | None

    def active(self, now: int) -> bool:
        """Whether pushes are still signed with it at `now`."""
        return self.expires_at is None or self.expires_at > now


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An `endpoints` row, its JSON columns parsed. Times are epoch milliseconds."""

    id: str
    namespace: str
    url: str
    kind: EndpointKind
    workflows: tuple[tuple[str, str, str], ...]
    """The (workflow, version, pool) triples of a `workflows` endpoint; empty otherwise."""
    tasks: tuple[str, ...]
    """The task names of a `tasks` endpoint; empty otherwise."""
    max_in_flight: int
    timeout_ms: int
    secrets: tuple[StoredSecret, ...]
    """Newest first, expired ones included until a rotation drops them."""
    created_at: int
    failures: int
    failing_since: int | None
    last_error: str | None
    retry_at: int | None

    def active_secrets(self, now: int) -> list[PushSecret]:
        """The secrets a push at `now` is signed with: unexpired, newest first."""
        return [PushSecret.parse(s.secret) for s in self.secrets if s.active(now)]


def dump_serves(entries: list[tuple[str, str, str]] | list[str]) -> str:
    """The `serves` column of an endpoint: its triples (as lists), or its task names."""
    return json.dumps(entries, separators=(",", ":"), ensure_ascii=False)


def dump_secrets(secrets: list[StoredSecret]) -> str:
    """The `secrets` column: newest first."""
    return json.dumps(
        [{"secret": s.secret, "expires_at": s.expires_at} for s in secrets],
        separators=(",", ":"),
    )


def endpoint(row: Row) -> Endpoint:
    """An `endpoints` row (`ENDPOINT_COLUMNS`) parsed."""
    kind: EndpointKind = row["kind"]
    serves = json.loads(row["serves"])
    return Endpoint(
        id=row["id"],
        namespace=row["namespace"],
        url=row["url"],
        kind=kind,
        workflows=tuple((w, v, p) for w, v, p in serves) if kind == "workflows" else (),
        tasks=tuple(serves) if kind == "tasks" else (),
        max_in_flight=row["max_in_flight"],
        timeout_ms=row["timeout_ms"],
        secrets=tuple(
            StoredSecret(s["secret"], s["expires_at"]) for s in json.loads(row["secrets"])
        ),
        created_at=row["created_at"],
        failures=row["failures"],
        failing_since=row["failing_since"],
        last_error=row["last_error"],
        retry_at=row["retry_at"],
    )


async def load_endpoint(
    tx: Tx, endpoint_id: str, namespace: str | None = None, lock: str = ""
) -> Endpoint | None:
    """The endpoint `endpoint_id` (of `namespace` when given), or `None`.

    `lock` is appended to the SELECT (`tx.lock_rows` to update the row after).
    """
    sql = f"SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE id = $1"
    args: list[str] = [endpoint_id]
    if namespace is not None:
        sql += " AND namespace = $2"
        args.append(namespace)
    row = await tx.fetchrow(sql + lock, *args)
    return None if row is None else endpoint(row)


async def list_endpoints(
    tx: Tx, kind: EndpointKind | None = None, namespace: str | None = None
) -> list[Endpoint]:
    """Endpoints oldest first: of `kind` and `namespace`, or of any when `None`."""
    clauses: list[str] = []
    args: list[str] = []
    for column, value in (("kind", kind), ("namespace", namespace)):
        if value is not None:
            args.append(value)
            clauses.append(f"{column} = ${len(args)}")
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = await tx.fetch(f"SELECT {ENDPOINT_COLUMNS} FROM endpoints{where} ORDER BY id", *args)
    return [endpoint(row) for row in rows]


def endpoint_info(found: Endpoint) -> EndpointInfo:
    """An endpoint as the API shows it: its secrets' key ids, never the secrets."""
    status: EndpointStatus = "healthy"
    if found.failures >= CIRCUIT_OPENS_AFTER:
        status = "open"
    elif found.failures:
        status = "failing"
    return EndpointInfo(
        id=found.id,
        namespace=found.namespace,
        url=found.url,
        kind=found.kind,
        workflows=[
            WorkflowCapability(workflow=w, version=v, pool=p) for w, v, p in found.workflows
        ],
        tasks=list(found.tasks),
        max_in_flight=found.max_in_flight,
        timeout=from_millis(found.timeout_ms),
        secrets=[
            EndpointSecretInfo(
                key_id=PushSecret.parse(s.secret).key_id, expires_at=from_ms(s.expires_at)
            )
            for s in found.secrets
        ],
        created_at=from_ms(found.created_at),
        status=status,
        failures=found.failures,
        failing_since=from_ms(found.failing_since),
        last_error=found.last_error,
        retry_at=from_ms(found.retry_at),
    )


async def _endpoint_of(tx: Tx, namespace: str, endpoint_id: str, lock: str = "") -> Endpoint:
    found = await load_endpoint(tx, endpoint_id, namespace, lock)
    if found is None:  # another namespace's endpoint is as unknown as a missing one
        raise NotFoundError("endpoint", endpoint_id)
    return found


class Endpoints:
    """The endpoint operations of the API."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def create(self, namespace: str, req: CreateEndpointRequest) -> CreateEndpointResponse:
        """Register the endpoint, with a new secret (shown in the answer alone)."""
        secret = str(PushSecret.generate())
        kind = req.kind
        serves = dump_serves(
            [(w.workflow, w.version, w.pool) for w in req.workflows or ()]
            if kind == "workflows"
            else list(req.tasks or ())
        )
        endpoint_id = new_id()

        async def insert(tx: Tx) -> Endpoint:
            await tx.execute(
                f"INSERT INTO endpoints ({ENDPOINT_COLUMNS})"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, NULL, NULL, NULL)",
                endpoint_id,
                namespace,
                req.url,
                kind,
                serves,
                req.max_in_flight,
                to_millis(req.timeout),
                dump_secrets([StoredSecret(secret, None)]),
                self._clock(),
            )
            return await _endpoint_of(tx, namespace, endpoint_id)

        created = await self._db.write(insert)
        return CreateEndpointResponse(endpoint=endpoint_info(created), secret=secret)

    async def get(self, namespace: str, endpoint_id: str) -> EndpointInfo:
        """One endpoint of the namespace."""
        async with self._db.reader() as tx:
            return endpoint_info(await _endpoint_of(tx, namespace, endpoint_id))

    async def list(self, namespace: str) -> EndpointPage:
        """Every endpoint of the namespace, oldest first."""
        async with self._db.reader(off_loop=True) as tx:
            found = await list_endpoints(tx, namespace=namespace)
        return EndpointPage(endpoints=[endpoint_info(e) for e in found])

    async def delete(self, namespace: str, endpoint_id: str) -> EndpointInfo:
        """Delete the endpoint (nothing more is pushed to it); the endpoint as it was."""

        async def remove(tx: Tx) -> Endpoint:
            found = await _endpoint_of(tx, namespace, endpoint_id, tx.lock_rows)
            await tx.execute("DELETE FROM endpoints WHERE id = $1", endpoint_id)
            return found

        return endpoint_info(await self._db.write(remove))

    async def rotate_secret(
        self, namespace: str, endpoint_id: str, req: RotateEndpointSecretRequest
    ) -> RotateEndpointSecretResponse:
        """Put a new secret first; the current one signs on for `previous_expires_in`.

        An endpoint keeps two secrets at most: one rotated out before is dropped now.
        """
        secret = str(PushSecret.generate())

        async def rotate(tx: Tx) -> Endpoint:
            found = await _endpoint_of(tx, namespace, endpoint_id, tx.lock_rows)
            keep_ms = to_millis(req.previous_expires_in)
            kept = [StoredSecret(secret, None)]
            if keep_ms and found.secrets:
                kept.append(replace(found.secrets[0], expires_at=self._clock() + keep_ms))
            await tx.execute(
                "UPDATE endpoints SET secrets = $2 WHERE id = $1", endpoint_id, dump_secrets(kept)
            )
            return await _endpoint_of(tx, namespace, endpoint_id)

        rotated = await self._db.write(rotate)
        return RotateEndpointSecretResponse(endpoint=endpoint_info(rotated), secret=secret)
