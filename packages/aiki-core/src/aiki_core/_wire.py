"""Base classes and field types shared by the wire models.

Requests are strict (`extra="forbid"`): a misspelt field is a clear 4xx, not a
silently ignored option. Responses are lenient (`extra="ignore"`): a newer server
may add fields without breaking an older client. Both are frozen.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "MAX_COUNT",
    "ClientId",
    "Count",
    "Fingerprint",
    "Name",
    "Ordinal",
    "ReferenceId",
    "RequestModel",
    "ResponseModel",
    "VersionName",
]


class RequestModel(BaseModel):
    """Base of every model a caller sends: unknown fields are rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ResponseModel(BaseModel):
    """Base of every model the server returns: unknown fields are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")


Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$"),
]
"""A workflow, task, event, pool, schedule or namespace name: letters, digits and `_.:/-`."""

VersionName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"),
]
"""A workflow version such as `1.0.0` or `2024-06-01`."""

ReferenceId = Annotated[str, StringConstraints(min_length=1, max_length=255)]
"""A caller-chosen idempotency key."""

ClientId = Annotated[str, StringConstraints(pattern=r"^[0-9A-HJKMNP-TV-Z]{26}$")]
"""An id a client mints for a run or schedule before it exists: a ULID in canonical form."""

Fingerprint = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
"""A hex SHA-256 or HMAC-SHA-256 of a payload's canonical JSON."""

MAX_COUNT = 2**63 - 1
"""The largest revision, occurrence or attempt: what a 64-bit database integer holds."""

Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
"""A revision or an occurrence: 0 and up, storable in a 64-bit integer column."""

Ordinal = Annotated[int, Field(ge=1, le=MAX_COUNT)]
"""An attempt number: 1 and up, storable in a 64-bit integer column."""
