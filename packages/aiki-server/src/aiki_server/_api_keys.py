"""API keys: their format, and their rows, which hold a hash and never the key.

A key is `aiki_<id>_<secret>`: `id` is a ULID, by which a key is listed and revoked;
`secret` is 32 random bytes in base64url (`secrets.token_urlsafe(32)`). The database
keeps the SHA-256 (hex) of the whole key. A fast hash is the right one here: slow
password hashes (bcrypt, argon2) exist to make guessing a human's low-entropy password
expensive, and nothing guesses 256 random bits; they would cost milliseconds of CPU on
every request for nothing.

Each key opens exactly one namespace. Keys are never deleted, only revoked, so a
database that ever held a key keeps requiring one.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import TypeAdapter, ValidationError
from ulid import ULID

from aiki_core import InvalidRequestError
from aiki_core.wire import Name

if TYPE_CHECKING:
    from aiki_server._storage._database import Database, Row, Tx

KEY_PREFIX = "aiki_"
_WELL_FORMED = re.compile(r"^aiki_([0-9A-HJKMNP-TV-Z]{26})_[A-Za-z0-9_-]{20,128}$")
_NAMESPACE = TypeAdapter[str](Name)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key just created: `key` is shown this once; the database keeps only its hash."""

    id: str
    namespace: str
    key: str = field(repr=False)
    """`aiki_<id>_<secret>`, what a client sends as `Authorization: Bearer <key>`."""


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """A stored key as listed: never its hash. Times are epoch milliseconds."""

    id: str
    namespace: str
    created_at: int
    revoked_at: int | None


def hash_key(key: str) -> str:
    """The stored form of a key: the hex SHA-256 of all of it."""
    return hashlib.sha256(key.encode()).hexdigest()


def is_well_formed(key: str) -> bool:
    """Whether `key` has the shape of a key (checked before any lookup)."""
    return _WELL_FORMED.match(key) is not None


def checked_namespace(namespace: str) -> str:
    """`namespace` if it is a valid name; `InvalidRequestError` saying why if not."""
    try:
        return _NAMESPACE.validate_python(namespace)
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"]
        raise InvalidRequestError(f"invalid namespace {namespace!r}: {problem}") from None


async def create_key(db: Database, namespace: str, now: int) -> ApiKey:
    """Create a key for `namespace` (a valid name); the key, which is not kept."""
    namespace = checked_namespace(namespace)
    key_id = str(ULID())
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    await db.write(
        lambda tx: tx.execute(
            "INSERT INTO api_keys (id, namespace, key_hash, created_at, revoked_at)"
            " VALUES ($1, $2, $3, $4, NULL)",
            key_id,
            namespace,
            hash_key(key),
            now,
        )
    )
    return ApiKey(key_id, namespace, key)


async def list_keys(db: Database) -> list[ApiKeyRecord]:
    """Every key, oldest first (revoked ones too)."""
    async with db.reader() as tx:
        rows = await tx.fetch(
            "SELECT id, namespace, created_at, revoked_at FROM api_keys ORDER BY created_at, id"
        )
    return [_record(row) for row in rows]


async def revoke_key(db: Database, key_id: str, now: int) -> ApiKeyRecord | None:
    """Revoke a key (a revoked one keeps its first revocation time); `None` if unknown."""

    async def revoke(tx: Tx) -> Row | None:
        await tx.execute(
            "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            key_id,
            now,
        )
        return await tx.fetchrow(
            "SELECT id, namespace, created_at, revoked_at FROM api_keys WHERE id = $1", key_id
        )

    row = await db.write(revoke)
    return None if row is None else _record(row)


async def namespace_of(db: Database, key_hash: str) -> str | None:
    """The namespace the live (unrevoked) key of this `hash_key` opens, or `None`."""
    async with db.reader() as tx:
        row = await tx.fetchrow(
            "SELECT namespace FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
            key_hash,
        )
    return None if row is None else str(row["namespace"])


async def any_key(db: Database) -> bool:
    """Whether the database holds any key, revoked or not."""
    async with db.reader() as tx:
        return await tx.fetchrow("SELECT id FROM api_keys LIMIT 1") is not None


def _record(row: Row) -> ApiKeyRecord:
    return ApiKeyRecord(row["id"], row["namespace"], row["created_at"], row["revoked_at"])
