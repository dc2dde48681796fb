"""The protocols through which the Aiki packages meet.

No package imports a sibling other than `aiki_core`, so each seam between them is a
protocol here:

- a task (`aiki_task`) runs inside a run through `TaskRunContext`, which the
  workflow package's run object implements, and hands it a `TaskInvocation`; a remote
  task's attempt calls `TaskAttemptInfo.call_remote`, which the run implements with
  `RunExecution.call_remote_task` (the worker's, over `WorkerApi.call_remote_task`);
- a workflow version (`aiki_workflow`) starts itself through `WorkflowStarter`,
  which the client implements, and gets back a `WorkflowRunHandle`; the client's
  schedules take a version as a `SchedulableVersion`;
- a worker (`aiki_worker`) executes any `ExecutableVersion`, giving it a
  `RunExecution`: the claimed run and the way to record task results; it talks to
  the server through `WorkerApi`, which the client implements;
- a run handle (the client's) sends an event defined by the workflow package
  through `EventDefinition`, which names the event and encodes its data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence
    from datetime import datetime, timedelta

    from pydantic import JsonValue

    from aiki_core._api import (
        AbandonedTaskRequest,
        ClaimedRun,
        ClaimRequest,
        ClaimResponse,
        CreateWebhookRequest,
        CreateWebhookResponse,
        DirectivesRequest,
        DirectivesResponse,
        HeartbeatRequest,
        HeartbeatResponse,
        RecordTaskRequest,
        RecordTaskResponse,
        RunAction,
        SendEventResponse,
        StartChildRequest,
        StartRunRequest,
        StartRunResponse,
        TransitionRunRequest,
        TransitionRunResponse,
    )
    from aiki_core._codec import PayloadCodec
    from aiki_core._ids import RunId, TaskAddress
    from aiki_core._interceptors import Interceptor
    from aiki_core._logging import Logger
    from aiki_core._migration import DryRunAnswer, DryRunReceipt
    from aiki_core._push import PushedTaskAnswer, RemoteTaskRequest
    from aiki_core._rate_limits import AcquireRateLimitResponse, RateLimitUse
    from aiki_core._records import RunDetail, RunSummary
    from aiki_core._retry import RetryPolicy
    from aiki_core._status import RunStatus

__all__ = [
    "EventDefinition",
    "ExecutableVersion",
    "RunExecution",
    "SchedulableVersion",
    "TaskAttemptInfo",
    "TaskInvocation",
    "TaskRunContext",
    "WorkerApi",
    "WorkflowRunHandle",
    "WorkflowStarter",
]

ResultT = TypeVar("ResultT")
ResultT_co = TypeVar("ResultT_co", covariant=True)
DataT = TypeVar("DataT")
DataT_contra = TypeVar("DataT_contra", contravariant=True)
InT_contra = TypeVar("InT_contra", contravariant=True)


@dataclass(frozen=True, slots=True)
class TaskAttemptInfo:
    """What the engine tells one attempt of a task call about itself."""

    run_id: RunId
    task_name: str
    address: TaskAddress
    occurrence: int
    attempt: int
    log: Logger
    rate_limit_granted_at: datetime | None = None
    """When the server granted this attempt's rate limit units (its clock), if it took any."""
    call_remote: Callable[[], Awaitable[JsonValue]] | None = None
    """Runs this attempt on the task endpoint that serves the task, where the run can push.

    Its result as JSON values (opened by the codec); a failed attempt raises the
    endpoint's error as a `RemoteError`, retryable as it says. `None` where no server
    stands behind the attempt (a task service running a pushed attempt).
    """
    abandoned: Callable[[Callable[[], bool]], None] | None = None
    """Told of the thread a cancelled attempt leaves running (a plain function's); the
    engine reports the attempt abandoned if `still_running()` after a grace period.
    `None` where nothing watches (the thread is left alone)."""

    @property
    def idempotency_key(self) -> str:
        """The same for every attempt and replay of this call; pass it to external APIs."""
        return f"{self.run_id}:{self.address}:{self.occurrence}"


class TaskInvocation(Protocol):
    """One call of a task, as the task package hands it to the engine."""

    @property
    def name(self) -> str:
        """The task's name, the first half of its address."""

    @property
    def input(self) -> JsonValue:
        """The validated input as JSON values, before any codec."""

    @property
    def retry(self) -> RetryPolicy | None:
        """The task's retry policy; `None` defers to the run's default."""

    @property
    def timeout(self) -> timedelta | None:
        """The limit on one attempt; `None` for none."""

    def rate_limit(self) -> RateLimitUse | None:
        """The units each attempt takes from a server rate limit first, if any.

        Computed from the input when an attempt is about to run (never on replay);
        raises `RateLimitKeyError` when the task's key function fails.
        """

    async def run_attempt(self, attempt: TaskAttemptInfo) -> JsonValue:
        """Run the task's function once and return its validated result as JSON values."""


@runtime_checkable
class TaskRunContext(Protocol):
    """The run a task executes in (implemented by the workflow package's run object)."""

    @property
    def id(self) -> RunId:
        """The run's id."""

    @property
    def log(self) -> Logger:
        """The run's logger, with workflow, version and run id bound."""

    async def execute_task(self, invocation: TaskInvocation) -> JsonValue:
        """Return the call's recorded result on replay; otherwise run, record and return it."""


class WorkflowRunHandle(Protocol[ResultT_co]):
    """A handle on one run, typed by the run's result (implemented by the client)."""

    @property
    def id(self) -> RunId:
        """The run's id."""

    async def status(self) -> RunStatus:
        """The run's current status."""

    async def detail(self) -> RunDetail:
        """The run with its tasks, waits, children and history."""

    async def result(self, *, timeout: timedelta | None = None) -> ResultT_co:
        """Wait for the run to end and return its result.

        Raises `WorkflowFailedError` or `WorkflowCancelledError` when it did not
        complete, and `AikiTimeoutError` when `timeout` passes first.
        """

    async def wait_for_status(
        self, statuses: Iterable[RunStatus], *, timeout: timedelta | None = None
    ) -> RunStatus:
        """Wait until the run is in one of `statuses` and return that status."""

    async def cancel(self, reason: str | None = None) -> None:
        """Cancel the run and its children."""

    async def pause(self) -> RunSummary:
        """Hold the run where it is; a worker running it stops at its next task boundary."""

    async def resume(self) -> RunSummary:
        """Let a paused run go on from where it was."""

    async def wake(self) -> RunSummary:
        """End the run's sleep now."""

    async def send_event(
        self, event: EventDefinition[DataT], data: DataT, *, reference_id: str | None = None
    ) -> SendEventResponse:
        """Deliver `event` to the run; a repeated `reference_id` is dropped."""


class WorkflowStarter(Protocol):
    """The client surface a workflow version needs to start a run of itself."""

    async def start_run(
        self, request: StartRunRequest, decode_result: Callable[[JsonValue], ResultT]
    ) -> WorkflowRunHandle[ResultT]:
        """Start (or find, by reference id) a run; the handle decodes results with `decode_result`.

        The client applies its codec to `request.input` before sending it.
        """


class EventDefinition(Protocol[DataT_contra]):
    """An event a run can wait for, as a sender sees it: its name and its data's encoding."""

    @property
    def name(self) -> str:
        """The event's name."""

    def encode_data(self, data: DataT_contra) -> JsonValue:
        """Validate `data` against the event's type; its JSON value."""


class SchedulableVersion(Protocol[InT_contra]):
    """A workflow version as a schedule takes it, typed by its payload (`WorkflowVersion`)."""

    @property
    def workflow(self) -> str:
        """The workflow's name."""

    @property
    def version(self) -> str:
        """The version's name."""

    @property
    def timeout(self) -> timedelta | None:
        """The deadline of each run, from its start; `None` for none."""

    def encode_payload(self, payload: InT_contra) -> JsonValue:
        """Validate a payload and return it as JSON values (before any codec)."""


class RunExecution(Protocol):
    """What a worker gives a version to execute one claimed run."""

    @property
    def claim(self) -> ClaimedRun:
        """The run and everything recorded for it so far."""

    @property
    def log(self) -> Logger:
        """The run's logger, with workflow, version and run id bound."""

    @property
    def codec(self) -> PayloadCodec:
        """The codec of the payloads in `claim` and of what is recorded."""

    @property
    def create_context(self) -> Callable[[ClaimedRun], object] | None:
        """The worker's per-run context factory (`create_context`), or `None`.

        The version calls it for each execution (its own factory, if it has one,
        instead), and awaits what it returns if that is awaitable.
        """

    @property
    def pause_requested(self) -> bool:
        """Whether the run was paused: it stops before its next task starts."""

    @property
    def interceptors(self) -> Sequence[Interceptor]:
        """The worker's interceptors: the run calls their `execute_task` around each attempt."""

    async def record_task(self, request: RecordTaskRequest) -> RecordTaskResponse:
        """Record one task attempt now, fenced by the claim's revision."""

    def defer_task(self, request: RecordTaskRequest) -> None:
        """Hold a task record until it is on record.

        It is sent now in the background, or with the run's transition if that comes first.
        """

    async def flush_tasks(self) -> None:
        """Wait until every held task record is on record; raise the error that stopped one.

        Called before a task or a child starts: what it does may depend on them, and
        their answers may tell the run to pause.
        """

    async def start_child(self, request: StartChildRequest) -> StartRunResponse:
        """Start a child run of this run (idempotent by address and occurrence)."""

    async def create_webhook(self, request: CreateWebhookRequest) -> CreateWebhookResponse:
        """Mint a signed URL that delivers an event to this run."""

    async def acquire_rate_limit(self, use: RateLimitUse) -> AcquireRateLimitResponse:
        """Take a task attempt's units from its rate limit, or learn when they can be had."""

    async def call_remote_task(self, request: RemoteTaskRequest) -> PushedTaskAnswer:
        """Have the server push one task attempt to its task endpoint; the endpoint's answer.

        Sent once: a failure fails the attempt, and the task's retry policy decides.
        """

    def task_abandoned(
        self, task_name: str, attempt: int, still_running: Callable[[], bool]
    ) -> None:
        """Watch the thread of a cancelled attempt: abandoned if `still_running()` after a grace."""


class ExecutableVersion(Protocol):
    """A workflow version as a worker sees it: a name, a version and a way to run it."""

    @property
    def workflow(self) -> str:
        """The workflow's name."""

    @property
    def version(self) -> str:
        """The version's name."""

    async def execute(self, execution: RunExecution) -> RunAction:
        """Replay and continue the run; return what to do with it (complete, fail, suspend)."""


class WorkerApi(Protocol):
    """The server calls a worker makes (implemented by the client)."""

    @property
    def codec(self) -> PayloadCodec:
        """The codec of every payload the worker reads and records."""

    @property
    def log(self) -> Logger:
        """The client's logger; a worker binds its id on a child of it."""

    async def claim(self, request: ClaimRequest) -> ClaimResponse:
        """Long-poll for runs to execute."""

    async def heartbeat(self, request: HeartbeatRequest) -> HeartbeatResponse:
        """Refresh the claims on held runs; the answer says what to do with each."""

    async def report_abandoned_task(self, run_id: RunId, request: AbandonedTaskRequest) -> None:
        """Note in a run's history that a task attempt's thread ignored its cancellation."""

    async def directives(self, request: DirectivesRequest) -> DirectivesResponse:
        """Long-poll until a held run calls for another directive (cancelled, paused, lost)."""

    async def report_dry_run(self, job_id: str, answer: DryRunAnswer) -> DryRunReceipt:
        """Report the replay of a dry-run job the directives poll handed out."""

    async def record_task(self, run_id: RunId, request: RecordTaskRequest) -> RecordTaskResponse:
        """Record one task attempt of a held run."""

    async def start_child(self, run_id: RunId, request: StartChildRequest) -> StartRunResponse:
        """Start a child run of a held run."""

    async def transition(
        self, run_id: RunId, request: TransitionRunRequest
    ) -> TransitionRunResponse:
        """Complete, fail, suspend or release a held run."""

    async def create_webhook(
        self, run_id: RunId, request: CreateWebhookRequest
    ) -> CreateWebhookResponse:
        """Mint a signed URL that delivers an event to a held run."""

    async def acquire_rate_limit(
        self, use: RateLimitUse, request_id: str
    ) -> AcquireRateLimitResponse:
        """Take units from a rate limit now, or learn when they can be had.

        `request_id` (a ULID) is the same for each retry of one request, so that a grant
        whose answer was lost is given back, not taken again.
        """

    async def call_remote_task(self, run_id: RunId, request: RemoteTaskRequest) -> PushedTaskAnswer:
        """Have the server push one task attempt of a held run to the endpoint serving it."""
