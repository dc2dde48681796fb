"""Push delivery's endpoints: their rows, as the dispatcher and the API read them.

An endpoint is a URL of one namespace the server pushes work to: claimed runs of its
(workflow, version, pool) triples (kind `workflows`), or attempts of its tasks (kind
`tasks`). Its signing secrets are kept in clear, newest first: the server signs every
push with each one still unexpired (see `aiki_core.push`), which a hash of them could
not do. A rotation puts a new secret first and gives the previous one an expiry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from aiki_core.push import PushSecret

if TYPE_CHECKING:
    from aiki_server._storage._database import Row, Tx

EndpointKind = Literal["workflows", "tasks"]
"""What an endpoint serves: runs of workflow versions, or task attempts."""

ENDPOINT_COLUMNS = (
    "id, namespace, url, kind, serves, max_in_flight, timeout_ms, secrets, created_at,"
    " failures, failing_since, last_error, retry_at"
)


@dataclass(frozen=True, slots=True)
class StoredSecret:
    """One secret of an endpoint as stored: `expires_at` (epoch ms) `None` while current."""

    secret: str
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
