"""What the server pushes to an endpoint, and what the endpoint answers.

Two kinds of endpoint take pushed work:

- a *workflow endpoint* (`aiki_worker.asgi_app`) gets a `PushedRun`: a run the server
  claimed for it, with everything its replay needs, exactly as a pulling worker gets
  it. It executes the run through its client (task records and the run's transition
  are the usual calls, fenced by the claim's revision) and answers `PushedRunAnswer`
  once the run has ended, suspended or been released;
- a *task endpoint* (`aiki_task.asgi_app`) gets a `PushedTask`: one attempt of a task
  call made by a run elsewhere. It runs the attempt and answers `PushedTaskAnswer`
  with the result or the error. The run's worker asked for the push
  (`RemoteTaskRequest`) and gets the answer back as the server's reply: it records the
  attempt as usual, and its task's retry policy decides whether another push follows.
  An answer not back within the server's wait is `pending`: the server goes on
  pushing without the worker, records the attempt's outcome itself (by the policy the
  request carried) and re-queues the run, which suspends meanwhile (`AwaitTask`).

Both are signed (`aiki_core.push.sign_push`) and must be checked by the endpoint
before anything runs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, JsonValue

from aiki_core._api import ClaimedRun
from aiki_core._duration import Duration
from aiki_core._error_info import ErrorInfo
from aiki_core._ids import RunId, TaskAddress, WorkerId
from aiki_core._retry import RetryPolicy
from aiki_core._wire import Count, Name, Ordinal, RequestModel, ResponseModel

__all__ = [
    "PushedRun",
    "PushedRunAnswer",
    "PushedTask",
    "PushedTaskAnswer",
    "RemoteTaskRequest",
]


class PushedRun(ResponseModel):
    """A run claimed for a workflow endpoint, pushed to it to execute."""

    claim: ClaimedRun
    worker_id: WorkerId = Field(
        description="The worker id the claim was made under: the endpoint writes as it."
    )
    answer_within: Duration = Field(
        description="How long the server waits for the answer. Before it passes, the"
        " endpoint suspends or releases a run that is not done, to be pushed again."
    )


class PushedRunAnswer(ResponseModel):
    """What the endpoint did with a pushed run: the action it transitioned the run by."""

    run_id: RunId
    outcome: Literal["completed", "failed", "suspended", "released", "continued", "lost"]
    """`lost` when the run was taken from it (cancelled, or claimed again) while it ran."""


class PushedTask(ResponseModel):
    """One attempt of a task call, pushed to the task endpoint that serves the task."""

    run_id: RunId
    task_name: Name
    address: TaskAddress
    occurrence: Count
    attempt: Ordinal
    input: JsonValue = Field(description="The call's input, as the run's codec encoded it.")
    timeout: Duration | None = Field(
        default=None, description="The task's limit on one attempt, if it has one."
    )

    @property
    def idempotency_key(self) -> str:
        """The same for every attempt and replay of this call (`TaskContext.idempotency_key`)."""
        return f"{self.run_id}:{self.address}:{self.occurrence}"


class PushedTaskAnswer(ResponseModel):
    """How one pushed task attempt ended: its encoded result, or its error.

    `pending` only in the server's answer to a `RemoteTaskRequest`: the attempt was not
    over within the server's wait, and the run suspends on it (`AwaitTask`) while the
    server records its outcome. A task endpoint answers `completed` or `failed`.
    """

    status: Literal["completed", "failed", "pending"]
    result: JsonValue = None
    error: ErrorInfo | None = None
    """Set when `failed`; its `retryable` tells whether the task's retry policy applies."""


class RemoteTaskRequest(RequestModel):
    """A worker's request to push one attempt of a task call to the endpoint serving it.

    Fenced like a task record by the claim's `revision`; the server pushes a
    `PushedTask` of these fields and the run's id, and answers its `PushedTaskAnswer`.
    """

    revision: Count
    worker_id: WorkerId | None = None
    name: Name
    address: TaskAddress
    occurrence: Count
    attempt: Ordinal
    input: JsonValue = Field(default=None, description="The call's input, sealed by the codec.")
    timeout: Duration | None = Field(
        default=None, description="The task's limit on one attempt, if it has one."
    )
    retry: RetryPolicy | None = Field(
        default=None,
        description="The retry policy that decides after a failed attempt (none: never"
        " retried): the server applies it when it records a long attempt's outcome.",
    )
    retry_attempt: Ordinal | None = Field(
        default=None,
        description="The attempt's number as the policy counts it (this run attempt's"
        " own); `attempt` when not given.",
    )
