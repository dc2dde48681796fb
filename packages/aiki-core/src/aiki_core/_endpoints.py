"""Push delivery's endpoints: URLs the server pushes work to, and their signing secrets.

A *workflow endpoint* serves (workflow, version, pool) triples: the server claims
their queued runs for it and pushes each one (`PushedRun`). A *task endpoint* serves
task names: the server pushes it the attempts of those tasks (`PushedTask`). Each
push is signed with the endpoint's secrets (`aiki_core.push`); the secret is shown
once, when the endpoint is created or its secret rotated.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from datetime import timedelta
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from aiki_core._api import WorkflowCapability
from aiki_core._duration import Duration, DurationRange, duration_field
from aiki_core._wire import Integer, Name, RequestModel, ResponseModel, given

__all__ = [
    "CreateEndpointRequest",
    "CreateEndpointResponse",
    "EndpointInfo",
    "EndpointKind",
    "EndpointPage",
    "EndpointSecretInfo",
    "EndpointStatus",
    "RotateEndpointSecretRequest",
    "RotateEndpointSecretResponse",
]

MAX_ENDPOINT_URL_LENGTH = 2000
"""The longest endpoint URL, in characters."""
MAX_ENDPOINT_ENTRIES = 100
"""The most triples or task names one endpoint serves."""
MAX_PREVIOUS_SECRET_LIFETIME = timedelta(days=30)
"""The longest a rotated-out secret is still honoured."""

EndpointKind = Literal["workflows", "tasks"]
"""What an endpoint serves: runs of workflow versions, or task attempts."""

EndpointStatus = Literal["healthy", "failing", "open"]
"""`healthy`: its last push succeeded (or none was made); `failing`: its last pushes
failed and the next waits for a back-off; `open`: so many failed in a row that the
circuit opened, and one trial push goes out when its cool-off has passed."""


_HEX = "[0-9A-Fa-f]{1,4}"
_IPV6 = "|".join(
    (
        f"(?:{_HEX}:){{7}}{_HEX}",
        f"(?:{_HEX}:){{1,7}}:",
        *(f"(?:{_HEX}:){{1,{7 - n}}}(?::{_HEX}){{{n}}}" for n in range(1, 7)),
        f":(?:(?::{_HEX}){{1,7}}|:)",
    )
)
_PORT = "6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}"
URL_PATTERN = (
    rf"^[Hh][Tt][Tt][Pp][Ss]?://(?:[._-]*[A-Za-z0-9][A-Za-z0-9._-]*|\[(?:{_IPV6})\])"
    rf"(?::(?:{_PORT})?)?"
    r'(?:[/?][!-"$-~]*)?$'
)
"""What an endpoint URL is: `http://` or `https://`, a host name (not dots and dashes
alone) or IP address, an optional port, then an optional path and query of printable
ASCII; no user info, no fragment, nothing a request line could not carry (non-ASCII is
percent-encoded). Written without lookarounds, which JSON Schema tools and test data
generators read poorly."""
_URL = re.compile(URL_PATTERN)


def _check_url(url: str) -> str:
    # the common mistakes get their own message; the pattern, stated in the JSON Schema
    # too, has the last word
    if not url.lower().startswith(("http://", "https://")):
        raise ValueError("the URL must be http:// or https://")
    authority = url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
    if "@" in authority:
        raise ValueError("the URL must not carry a user name or password")
    host = authority if authority.startswith("[") else authority.split(":", 1)[0]
    if not host.strip("._-#"):  # not a name: empty, or dots and dashes alone
        raise ValueError("the URL must name a host")
    if "#" in url:
        raise ValueError("the URL must not have a fragment")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("the URL must not contain spaces or control characters")
    if _URL.fullmatch(url) is None:
        raise ValueError(
            "not a valid URL: a host name or IP address, a port up to 65535, and a path and"
            " query of printable ASCII (percent-encode the rest)"
        )
    _check_host(authority)
    return url


_METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog"})
"""Cloud metadata services' names (GCP's); most answer at a link-local address."""
_METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
)
"""Cloud metadata services' addresses outside link-local ones (AWS IPv6, Alibaba)."""
_NUMERIC_PART = "(?:0[xX][0-9A-Fa-f]*|[0-9]+)"
_NUMERIC_HOST = re.compile(rf"{_NUMERIC_PART}(?:\.{_NUMERIC_PART})*")
"""A host a resolver reads as an IPv4 address (`2852039166`, `0xa9.0xfe.0xa9.0xfe`)."""


def _check_host(authority: str) -> None:
    """Refuse a host the server must not push to: a cloud metadata service's.

    Pushes are requests the server makes on an API key holder's behalf; link-local
    addresses (169.254.0.0/16, fe80::/10), where metadata services hand out the
    machine's credentials, and the known metadata names and addresses are refused.
    A name that resolves to one is not seen here.
    """
    if authority.startswith("["):
        host = authority[1 : authority.index("]")]
    else:
        host = authority.rsplit(":", 1)[0].rstrip(".")
    if host.lower() in _METADATA_HOSTS:
        raise ValueError("the URL must not point at a cloud metadata service")
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    if authority.startswith("["):
        address = ipaddress.IPv6Address(host)
        address = address.ipv4_mapped or address
    elif _NUMERIC_HOST.fullmatch(host):
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            raise ValueError(f"not a valid IP address: {host}") from None
    else:
        return
    if address.is_link_local:
        raise ValueError(
            "the URL must not point at a link-local address (where cloud metadata services answer)"
        )
    if address in _METADATA_ADDRESSES:
        raise ValueError("the URL must not point at a cloud metadata service")


EndpointUrl = Annotated[
    str,
    StringConstraints(max_length=MAX_ENDPOINT_URL_LENGTH),
    AfterValidator(_check_url),
    WithJsonSchema(
        {"type": "string", "maxLength": MAX_ENDPOINT_URL_LENGTH, "pattern": URL_PATTERN}
    ),
]
"""An absolute `http://` or `https://` URL with a host, no user info and no fragment."""

PushTimeout = Annotated[
    Duration, DurationRange(at_least=timedelta(seconds=1), at_most=timedelta(minutes=15))
]
"""How long the server waits for an endpoint's answer to one push."""


class CreateEndpointRequest(RequestModel):
    """Register a URL to push work to: give `workflows` or `tasks`, not both."""

    url: EndpointUrl
    workflows: list[WorkflowCapability] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_ENDPOINT_ENTRIES,
        description="The (workflow, version, pool) triples whose runs it executes"
        " (a workflow endpoint).",
        json_schema_extra={"uniqueItems": True},
    )
    tasks: list[Name] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_ENDPOINT_ENTRIES,
        description="The task names whose attempts it runs (a task endpoint).",
        json_schema_extra={"uniqueItems": True},
    )
    max_in_flight: Integer = Field(
        default=10,
        ge=1,
        le=1000,
        description="Pushes to it waiting for their answer at once, per server replica.",
    )
    timeout: PushTimeout = duration_field(timedelta(seconds=60))

    model_config = ConfigDict(json_schema_extra={"oneOf": [given("workflows"), given("tasks")]})

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.workflows is None) == (self.tasks is None):
            raise ValueError("give workflows or tasks, exactly one")
        entries: list[object] = [
            *((w.workflow, w.version, w.pool) for w in self.workflows or ()),
            *(self.tasks or ()),
        ]
        if len(set(entries)) != len(entries):
            raise ValueError(f"the {self.kind} listed must differ from each other")
        return self

    @property
    def kind(self) -> EndpointKind:
        """What the endpoint serves: the list the request gives."""
        return "workflows" if self.workflows is not None else "tasks"


class EndpointSecretInfo(ResponseModel):
    """One secret an endpoint's pushes are signed with: its key id, never the secret."""

    key_id: str
    expires_at: AwareDatetime | None = Field(
        default=None, description="When a rotated-out secret stops signing; none if current."
    )


class EndpointInfo(ResponseModel):
    """An endpoint, with the health of its pushes."""

    id: str
    namespace: str
    url: str
    kind: EndpointKind
    workflows: list[WorkflowCapability] = Field(
        default_factory=list, description="What a `workflows` endpoint serves."
    )
    tasks: list[str] = Field(default_factory=list, description="What a `tasks` endpoint serves.")
    max_in_flight: int
    timeout: Duration
    secrets: list[EndpointSecretInfo] = Field(description="Newest first.")
    created_at: AwareDatetime
    status: EndpointStatus
    failures: int = Field(description="Pushes failed in a row since the last success.")
    failing_since: AwareDatetime | None = None
    last_error: str | None = Field(
        default=None, description="What the last failed push met (`HTTP 503`, a timeout)."
    )
    retry_at: AwareDatetime | None = Field(
        default=None, description="No push goes out before this (a back-off or cool-off)."
    )


class CreateEndpointResponse(ResponseModel):
    """The endpoint created, and its secret, shown this once."""

    endpoint: EndpointInfo
    secret: str = Field(
        repr=False, description="The signing secret (`aiki_push_...`) for the endpoint's app."
    )


class RotateEndpointSecretRequest(RequestModel):
    """Sign pushes with a new secret; the previous one is honoured `previous_expires_in` more."""

    previous_expires_in: Annotated[
        Duration, DurationRange(at_most=MAX_PREVIOUS_SECRET_LIFETIME)
    ] = duration_field(
        timedelta(hours=24),
        description="How long pushes are still signed with the previous secret too, while"
        " the endpoint's app learns the new one; 0 revokes it now.",
    )


class RotateEndpointSecretResponse(ResponseModel):
    """The endpoint with its new secret first, and that secret, shown this once."""

    endpoint: EndpointInfo
    secret: str = Field(repr=False, description="The new signing secret, for the endpoint's app.")


class EndpointPage(ResponseModel):
    """Every endpoint of a namespace, oldest first."""

    endpoints: list[EndpointInfo]
