"""Base classes and field types shared by the wire models.

Requests are strict (`extra="forbid"`): a misspelt field is a clear 4xx, not a
silently ignored option. Responses are lenient (`extra="ignore"`): a newer server
may add fields without breaking an older client. Both are frozen.

The field types take JSON's types as they are: an integer field takes a JSON
number with no fraction (`5` or `5.0`, as JSON Schema counts it), never `"5"` or
`true`; a boolean takes only `true` or `false`; a timestamp only an RFC 3339
string. Every limit a type checks (lengths, patterns, ranges) is stated in its JSON
Schema, so the OpenAPI document says exactly what the server accepts.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
)

__all__ = [
    "ID",
    "ID_PATTERN",
    "MAX_COUNT",
    "NO_NUL",
    "Boolean",
    "ClientId",
    "Count",
    "Cursor",
    "Fingerprint",
    "Identifier",
    "Integer",
    "Name",
    "Number",
    "Ordinal",
    "ReferenceId",
    "RequestModel",
    "ResponseModel",
    "Timestamp",
    "VersionName",
    "given",
    "requiring",
    "whole_number",
]


class RequestModel(BaseModel):
    """Base of every model a caller sends: unknown fields are rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ResponseModel(BaseModel):
    """Base of every model the server returns: unknown fields are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")


def given(*names: str) -> dict[str, Any]:
    """A JSON Schema that holds when every one of `names` is present and not `null`.

    For rules across fields (`{"not": given("start_at", "delay")}`), stated in a
    model's `json_schema_extra` beside the validator that checks them.
    """
    return {"required": list(names), "properties": {n: {"not": {"type": "null"}} for n in names}}


def requiring(*names: str) -> Any:
    """A model's `json_schema_extra` listing `names` as required although they have defaults.

    For a discriminated union's tag (`kind`), which the server needs on the wire even
    though Python code may leave it out.
    """

    def extra(schema: dict[str, Any]) -> None:
        schema["required"] = sorted({*schema.get("required", ()), *names})

    return extra


# -- numbers and booleans -----------------------------------------------------------------


def whole_number(value: object) -> object:
    """`value`, as an `int` if it is a float without a fraction (a `BeforeValidator`).

    JSON has one number type: 5.0 is the integer 5, as JSON Schema counts it.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# (constraints come before the `BeforeValidator`, or the JSON Schema says `ge`, not `minimum`)
Integer = Annotated[int, Strict(), BeforeValidator(whole_number)]
"""An integer: a JSON number without a fraction; not a string, not a boolean."""

Number = Annotated[float, Strict()]
"""A JSON number; not a string, not a boolean."""

Boolean = Annotated[bool, Strict()]
"""`true` or `false`; not `1`, not `"yes"`."""

MAX_COUNT = 2**53 - 1
"""The largest revision, occurrence or attempt: the largest integer a JSON parser
that reads numbers as doubles (JavaScript's, for one) still holds exactly."""

Count = Annotated[int, Strict(), Field(ge=0, le=MAX_COUNT), BeforeValidator(whole_number)]
"""A revision or an occurrence: 0 and up, to `MAX_COUNT`."""

Ordinal = Annotated[int, Strict(), Field(ge=1, le=MAX_COUNT), BeforeValidator(whole_number)]
"""An attempt number: 1 and up, to `MAX_COUNT`."""


# -- strings --------------------------------------------------------------------------------

NO_NUL = r"^[^\x00]*$"
"""The pattern of a string the server stores as a column: no NUL, which PostgreSQL's text
cannot hold (payloads are JSON text, in which a NUL is escaped, so they may hold one)."""

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

ReferenceId = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=NO_NUL)]
"""A caller-chosen idempotency key."""

ID_PATTERN = "[0-9A-Za-z]{1,64}"
"""An id a caller names (of a run, a schedule, a webhook): the server's are ULIDs; another
string of 1 to 64 letters and digits is simply not found, and so is any other string (the
server answers a path id outside the pattern with 404, as an unknown one)."""

ID = StringConstraints(pattern=f"^{ID_PATTERN}$")
"""`ID_PATTERN` as a constraint, for `Annotated` id fields."""

Identifier = Annotated[str, ID]
"""An id a caller names, as a plain string (a path parameter, say)."""

ClientId = Annotated[str, StringConstraints(pattern=r"^[0-9A-HJKMNP-TV-Z]{26}$")]
"""An id a client mints for a run or schedule before it exists: a ULID in canonical form."""

Fingerprint = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
"""A hex SHA-256 or HMAC-SHA-256 of a payload's canonical JSON."""

Cursor = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,15}-[0-9A-Za-z]{1,64}$")]
"""A keyset position in a listing: `<created_at, epoch ms>-<id>` of the last row of a page."""


# -- timestamps -----------------------------------------------------------------------------

_RFC_3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})?"
)


def _rfc_3339(value: object) -> object:
    # pydantic would also read a number, or digits in a string, as seconds since the epoch;
    # a missing offset is left to `AwareDatetime`, whose error says so
    if isinstance(value, str) and _RFC_3339.fullmatch(value) is None:
        raise ValueError("a timestamp is an RFC 3339 date-time such as 2030-01-01T00:00:00Z")
    if isinstance(value, int | float):
        raise ValueError("a timestamp is an RFC 3339 date-time string, not a number")
    return value


def _in_utc_calendar(value: datetime) -> datetime:
    # `9999-12-31T23:59:59-14:00` is a valid RFC 3339 date-time past the calendar's end in
    # UTC; its schema cannot say so, so it is taken as that end (and the start likewise)
    try:
        value.astimezone(UTC)
    except OverflowError:
        return (datetime.max if value.year == datetime.max.year else datetime.min).replace(
            tzinfo=UTC
        )
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc_3339), AfterValidator(_in_utc_calendar)]
"""A moment with its UTC offset, as an RFC 3339 string; one past the years 1 to 9999 in UTC
(a few hours at either end, by its offset) is taken as the first or last moment of them."""
