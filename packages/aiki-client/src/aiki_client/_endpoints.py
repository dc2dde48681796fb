"""`client.endpoints`: register, read, list and delete push endpoints, and rotate their secrets."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Protocol, TypeAlias, TypeVar

from pydantic import BaseModel, ValidationError

from aiki_client._http import api_path
from aiki_core import PayloadValidationError
from aiki_core.wire import (
    DEFAULT_POOL,
    CreateEndpointRequest,
    CreateEndpointResponse,
    EndpointInfo,
    EndpointPage,
    RotateEndpointSecretRequest,
    RotateEndpointSecretResponse,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from aiki_client._client import Client

ModelT = TypeVar("ModelT", bound=BaseModel)


class _Version(Protocol):
    """A workflow version (`WorkflowVersion`): its workflow's name and its own."""

    @property
    def workflow(self) -> str: ...
    @property
    def version(self) -> str: ...


class _Task(Protocol):
    """A task (`aiki_task.Task`): its name."""

    @property
    def name(self) -> str: ...


ServedVersion: TypeAlias = _Version | tuple[str, str] | tuple[str, str, str]
"""A version a workflow endpoint serves: a `WorkflowVersion`, `(workflow, version)` or
`(workflow, version, pool)`."""
ServedTask: TypeAlias = _Task | str
"""A task a task endpoint serves: a task, or its name."""


def _triples(served: Iterable[ServedVersion] | None, pool: str) -> object:
    """The wire's triples; what is none (a str, a short tuple) goes as it is, to be refused."""
    given: object = served
    if served is None or isinstance(given, str):  # a str is an iterable, of its letters
        return given
    triples: list[object] = []
    for one in served:
        item: object = one
        workflow, version = getattr(item, "workflow", None), getattr(item, "version", None)
        if isinstance(item, tuple) and len(item) in (2, 3):
            in_pool = item[2] if len(item) == 3 else pool
            triples.append({"workflow": item[0], "version": item[1], "pool": in_pool})
        elif workflow is not None and version is not None:
            triples.append({"workflow": workflow, "version": version, "pool": pool})
        else:
            triples.append(item)
    return triples


def _names(served: Iterable[ServedTask] | None) -> object:
    """The wire's task names; what is none (a str for the list, a number) goes as it is."""
    given: object = served
    if served is None or isinstance(given, str):  # a str is an iterable, of its letters
        return given
    return [one if isinstance(one, str) else getattr(one, "name", one) for one in served]


def _checked(model: type[ModelT], what: str, **fields: object) -> ModelT:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise PayloadValidationError.from_pydantic(what, exc) from None


class Endpoints:
    """The push endpoints of the client's API key's namespace (`client.endpoints`).

    The server pushes work to an endpoint's URL instead of waiting for a worker to
    pull it: a workflow endpoint gets the claimed runs of its versions, a task
    endpoint the attempts of its tasks. Each push is signed with the endpoint's
    secret, which is shown once, by `create` and `rotate_secret`: give it to the
    endpoint's app (`aiki_worker.asgi_app(..., secrets=[...])`).
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    async def create(
        self,
        url: str,
        *,
        workflows: Iterable[ServedVersion] | None = None,
        tasks: Iterable[ServedTask] | None = None,
        pool: str | None = None,
        max_in_flight: int = 10,
        timeout: timedelta = timedelta(seconds=60),
    ) -> CreateEndpointResponse:
        """Register `url` for `workflows` or for `tasks` (exactly one of them).

            created = await client.endpoints.create(
                "https://orders.example.com/aiki", workflows=[orders_v1]
            )
            print(created.secret)  # shown this once

        A version without a pool of its own is served in `pool` (`"default"` when
        `None`). At most `max_in_flight` pushes wait for their answer at once per
        server replica, each for at most `timeout` (1 s to 15 min). A bad URL or
        list raises `PayloadValidationError`; nothing is created.
        """
        in_pool = DEFAULT_POOL if pool is None else pool
        request = _checked(
            CreateEndpointRequest,
            f"invalid endpoint {url!r}",
            url=url,
            workflows=_triples(workflows, in_pool),
            tasks=_names(tasks),
            max_in_flight=max_in_flight,
            timeout=timeout,
        )
        return await self._client._call("POST", "/endpoints", CreateEndpointResponse, request)

    async def list(self) -> list[EndpointInfo]:
        """Every endpoint of the namespace, oldest first, with the health of its pushes."""
        page = await self._client._call("GET", "/endpoints", EndpointPage)
        return page.endpoints

    async def get(self, endpoint_id: str) -> EndpointInfo:
        """One endpoint (its secrets' key ids, never the secrets); `NotFoundError` if unknown."""
        return await self._client._call("GET", api_path("endpoints", endpoint_id), EndpointInfo)

    async def delete(self, endpoint_id: str) -> EndpointInfo:
        """Delete the endpoint: nothing more is pushed to it. The endpoint as it was."""
        return await self._client._call("DELETE", api_path("endpoints", endpoint_id), EndpointInfo)

    async def rotate_secret(
        self, endpoint_id: str, *, previous_expires_in: timedelta = timedelta(hours=24)
    ) -> RotateEndpointSecretResponse:
        """Sign the endpoint's pushes with a new secret, shown in the answer alone.

        Pushes are signed with the previous secret too for `previous_expires_in` (at
        most 30 days), time to give the endpoint's app the new one; `timedelta(0)`
        stops the previous secret now. A secret rotated out before is dropped.
        """
        request = _checked(
            RotateEndpointSecretRequest,
            f"invalid rotation of endpoint {endpoint_id!r}",
            previous_expires_in=previous_expires_in,
        )
        return await self._client._call(
            "POST",
            api_path("endpoints", endpoint_id, "secrets"),
            RotateEndpointSecretResponse,
            request,
        )
