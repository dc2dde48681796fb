"""`Client`: the HTTP client of the Aiki server.

It starts runs (as the `WorkflowStarter` a workflow version needs), hands out run
handles, lists runs, and serves workers (as their `WorkerApi`). Every payload passes
through its codec on the way out and back. Connection failures are retried by the
transport (the request never reached the server, so a retry is always safe), and
every HTTP error becomes the `AikiError` the server named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self, TypeVar

import httpx

from aiki_client.__about__ import __version__
from aiki_client._handle import WorkflowRunHandle
from aiki_core import (
    DEFAULT_NAMESPACE,
    ClaimRequest,
    ClaimResponse,
    CodecContext,
    ConsoleLogger,
    HeartbeatRequest,
    HeartbeatResponse,
    IdentityCodec,
    ListRunsQuery,
    RecordTaskRequest,
    RecordTaskResponse,
    RunPage,
    ServerUnavailableError,
    StartRunRequest,
    StartRunResponse,
    TransitionRunRequest,
    TransitionRunResponse,
    error_from_wire,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import TracebackType

    from pydantic import JsonValue

    from aiki_core import Logger, PayloadCodec, RunId

ResultT = TypeVar("ResultT")

DEFAULT_URL = "http://127.0.0.1:9850"


def _identity(value: JsonValue) -> JsonValue:
    return value


class Client:
    """Talks to an Aiki server: `async with Client("http://127.0.0.1:9850") as client`.

    `transport` replaces the network, e.g. `httpx.ASGITransport(app)` to reach an
    embedded server in process. `codec` encodes every payload (default: none).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        codec: PayloadCodec | None = None,
        logger: Logger | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        connect_retries: int = 3,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.codec: PayloadCodec = codec or IdentityCodec()
        self.log: Logger = logger or ConsoleLogger()
        self.namespace = DEFAULT_NAMESPACE
        headers = {"user-agent": f"aiki-client/{__version__}"}
        if api_key is not None:
            headers["authorization"] = f"Bearer {api_key}"
        self._http = httpx.AsyncClient(
            base_url=f"{self.base_url}/api/v1",
            headers=headers,
            transport=transport or httpx.AsyncHTTPTransport(retries=connect_retries),
            # long-polls hold a request up to a minute
            timeout=httpx.Timeout(10.0, read=75.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=100),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    # -- runs ----------------------------------------------------------------------------

    async def start_run(
        self, request: StartRunRequest, decode_result: Callable[[JsonValue], ResultT]
    ) -> WorkflowRunHandle[ResultT]:
        """Start (or find, by reference id) a run; prefer `version.start(client, payload)`."""
        context = CodecContext(request.reference_id or "", "input")
        encoded = request.model_copy(update={"input": self.codec.encode(request.input, context)})
        body = await self._post("/runs", encoded.model_dump(mode="json", exclude_none=True))
        started = StartRunResponse.model_validate(body)
        return WorkflowRunHandle(self, started.run.id, decode_result)

    def run_handle(
        self,
        run_id: RunId,
        decode_result: Callable[[JsonValue], ResultT] = _identity,  # type: ignore[assignment]
    ) -> WorkflowRunHandle[ResultT]:
        """A handle on an existing run; pass the version's `decode_result` for a typed result."""
        return WorkflowRunHandle(self, run_id, decode_result)

    async def list_runs(self, query: ListRunsQuery | None = None, **filters: Any) -> RunPage:
        """One page of runs, newest first; filters as in `ListRunsQuery`."""
        query = query or ListRunsQuery.model_validate(filters)
        params = [
            (key, str(item))
            for key, value in query.model_dump(mode="json", exclude_none=True).items()
            for item in (value if isinstance(value, list) else [value])
        ]
        return RunPage.model_validate(await self._get("/runs", params=params))

    # -- the worker's calls --------------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> ClaimResponse:
        """Long-poll for runs to execute."""
        return ClaimResponse.model_validate(
            await self._post("/claims", request.model_dump(mode="json"))
        )

    async def heartbeat(self, request: HeartbeatRequest) -> HeartbeatResponse:
        """Refresh claims; a directive per run."""
        return HeartbeatResponse.model_validate(
            await self._post("/heartbeats", request.model_dump(mode="json"))
        )

    async def record_task(self, run_id: RunId, request: RecordTaskRequest) -> RecordTaskResponse:
        """Record one task attempt."""
        return RecordTaskResponse.model_validate(
            await self._post(f"/runs/{run_id}/tasks", request.model_dump(mode="json"))
        )

    async def transition(
        self, run_id: RunId, request: TransitionRunRequest
    ) -> TransitionRunResponse:
        """Complete, fail, suspend or release a held run."""
        return TransitionRunResponse.model_validate(
            await self._post(f"/runs/{run_id}/transition", request.model_dump(mode="json"))
        )

    # -- HTTP ----------------------------------------------------------------------------

    async def _get(self, path: str, *, params: Sequence[tuple[str, str]] = ()) -> Any:
        return await self._send("GET", path, params=list(params))

    async def _post(self, path: str, body: Any) -> Any:
        return await self._send("POST", path, json=body)

    async def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnavailableError(
                f"cannot reach the Aiki server at {self.base_url}: {exc!r}"
            ) from exc
        if response.is_success:
            return response.json()
        try:
            body = response.json()
        except ValueError:
            body = {"text": response.text[:500]}
        raise error_from_wire(response.status_code, body if isinstance(body, dict) else {})

    def __repr__(self) -> str:
        return f"<Client {self.base_url}>"
