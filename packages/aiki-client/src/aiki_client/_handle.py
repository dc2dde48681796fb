"""`WorkflowRunHandle`: one run, seen from the client, typed by its result."""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar

import anyio

from aiki_client._http import api_path
from aiki_client._sealing import open_detail
from aiki_core import AikiTimeoutError, CodecContext, RunStatus
from aiki_core.sdk import raise_for_outcome
from aiki_core.wire import (
    RUN_TERMINAL_STATUSES,
    CancelRunRequest,
    RunDetail,
    RunOutcome,
    RunSummary,
    SendEventRequest,
    SendEventResponse,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from datetime import timedelta

    from pydantic import JsonValue

    from aiki_client._client import Client
    from aiki_core import RunId
    from aiki_core.sdk import EventDefinition

ResultT = TypeVar("ResultT")
DataT = TypeVar("DataT")

_LONG_POLL_MS = 30_000


class WorkflowRunHandle(Generic[ResultT]):
    """A handle on one run: its status, detail, result, and control."""

    def __init__(
        self, client: Client, run_id: RunId, decode_result: Callable[[JsonValue], ResultT]
    ) -> None:
        self._client = client
        self.id = run_id
        self._decode_result = decode_result

    async def status(self) -> RunStatus:
        """The run's current status."""
        return (await self.detail()).status

    async def detail(self) -> RunDetail:
        """The run with its tasks (attempts, errors), waits, events, children and history."""
        detail = await self._client._call("GET", api_path("runs", self.id), RunDetail)
        return open_detail(self._client.codec, detail)

    async def wait_for_status(
        self, statuses: Iterable[RunStatus], *, timeout: timedelta | None = None
    ) -> RunStatus:
        """Wait until the run is in one of `statuses`; `AikiTimeoutError` after `timeout`."""
        return (await self._wait(self.id, list(statuses), _deadline(timeout))).status

    async def result(self, *, timeout: timedelta | None = None) -> ResultT:
        """Wait for the run to end and return its result.

        A run that continued as new (`run.continue_as_new`) ends without a result of
        its own: the wait follows it to the run it continued as, and so on, and returns
        (or raises) what the last run of the chain ended with; `timeout` covers the
        whole chain.

        Raises `WorkflowFailedError` (with the remote error and its causes),
        `WorkflowCancelledError`, or `AikiTimeoutError` when `timeout` passes first.
        """
        deadline = _deadline(timeout)
        run_id = self.id
        while True:
            outcome = await self._wait(run_id, list(RUN_TERMINAL_STATUSES), deadline)
            if outcome.continued_as is None:
                break
            run_id = outcome.continued_as
        codec = self._client.codec
        error = outcome.error and outcome.error.open(codec, CodecContext.run(run_id, "error"))
        raise_for_outcome(run_id, outcome.status, error)
        decoded = codec.decode(outcome.result, CodecContext.run(run_id, "result"))
        return self._decode_result(decoded)

    async def cancel(self, reason: str | None = None) -> None:
        """Cancel the run and its children."""
        request = CancelRunRequest(reason=reason)
        await self._client._call("POST", api_path("runs", self.id, "cancel"), RunSummary, request)

    async def pause(self) -> RunSummary:
        """Hold the run where it is; a worker running it stops at its next task boundary."""
        return await self._client._call("POST", api_path("runs", self.id, "pause"), RunSummary)

    async def resume(self) -> RunSummary:
        """Let a paused run go on from where it was."""
        return await self._client._call("POST", api_path("runs", self.id, "resume"), RunSummary)

    async def wake(self) -> RunSummary:
        """End the run's pending sleeps now; each reports that it was woken early.

        Whatever else the suspended run waits for (a sleep raced against an event, say);
        `IllegalTransitionError` when it has no pending sleep.
        """
        return await self._client._call("POST", api_path("runs", self.id, "wake"), RunSummary)

    async def send_event(
        self,
        event: EventDefinition[DataT],
        data: DataT,
        *,
        reference_id: str | None = None,
    ) -> SendEventResponse:
        """Deliver `event` with `data` to the run; a repeated `reference_id` is dropped.

        An event sent before the run waits for it is kept until it does.
        """
        encoded = self._client.codec.encode(
            event.encode_data(data), CodecContext.event(self.id, event.name)
        )
        request = SendEventRequest(name=event.name, data=encoded, reference_id=reference_id)
        return await self._client._call(
            "POST", api_path("runs", self.id, "events"), SendEventResponse, request
        )

    async def _wait(
        self, run_id: RunId, statuses: list[RunStatus], deadline: float | None
    ) -> RunOutcome:
        params = [("status", s.value) for s in statuses]
        while True:
            poll_ms = _LONG_POLL_MS
            if deadline is not None:
                poll_ms = max(0, min(poll_ms, int((deadline - anyio.current_time()) * 1000)))
            outcome = await self._client._call(
                "GET",
                api_path("runs", run_id, "wait"),
                RunOutcome,
                params=[*params, ("timeout_ms", str(poll_ms))],
            )
            if outcome.status in statuses:
                return outcome
            if deadline is not None and anyio.current_time() >= deadline:
                raise AikiTimeoutError(
                    f"run {run_id} is still {outcome.status.value}",
                    details={"run_id": run_id, "status": outcome.status.value},
                )

    def __repr__(self) -> str:
        return f"<WorkflowRunHandle {self.id}>"


def _deadline(timeout: timedelta | None) -> float | None:
    return None if timeout is None else anyio.current_time() + timeout.total_seconds()
