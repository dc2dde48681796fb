"""Moving in-flight runs of a workflow from one version to another (`POST /migrations`).

A migrated run keeps everything it recorded: its next execution, on the new version,
replays from the top and reuses each recorded call the new code still makes (same task
name, same input); what changed runs anew.

A dry run (`dry_run=True`) moves nothing: the server hands each selected run to a live
worker that serves the new version, which replays it there without running or writing
anything and reports a `DryRunReport` (`POST /dry-runs/{job_id}/report`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal, Self

from pydantic import ConfigDict, Field, StrictBool, StringConstraints, model_validator

from aiki_core._api import WorkerName
from aiki_core._duration import Duration, DurationRange, duration_field
from aiki_core._ids import RunId
from aiki_core._records import RunSummary
from aiki_core._status import RunStatus
from aiki_core._wire import (
    NO_NUL,
    Name,
    ReferenceId,
    RequestModel,
    ResponseModel,
    VersionName,
    given,
)

__all__ = [
    "MAX_DRY_RUN_WAIT",
    "MAX_DRY_RUNS_PER_CALL",
    "MAX_MIGRATED_PER_CALL",
    "MIGRATABLE_STATUSES",
    "DryRunAnswer",
    "DryRunOutcome",
    "DryRunReceipt",
    "DryRunReport",
    "MigrateRunsRequest",
    "MigrateRunsResponse",
    "MigrationFilter",
    "NotReplayed",
    "RecordedCall",
    "SkippedRun",
]

MIGRATABLE_STATUSES = frozenset(
    {
        RunStatus.SCHEDULED,
        RunStatus.QUEUED,
        RunStatus.SLEEPING,
        RunStatus.AWAITING_EVENT,
        RunStatus.AWAITING_CHILD,
        RunStatus.AWAITING_RETRY,
        RunStatus.PAUSED,
    }
)
"""Statuses a run may be migrated in: not ended, and no attempt of it in flight (neither
`running` on a worker nor `awaiting_task` on a task endpoint)."""

MAX_MIGRATED_PER_CALL = 1000
"""The most runs one migration moves; call again for the rest (`has_more`)."""

MAX_DRY_RUNS_PER_CALL = 100
"""The most runs one dry run replays (a larger `limit` counts as this); `has_more` says
when more matched."""

MAX_DRY_RUN_WAIT = timedelta(seconds=60)
"""The longest a dry run waits for the worker's reports."""


class MigrationFilter(RequestModel):
    """Which runs of the old version to migrate: all by default, or those matching every field.

    `run_ids` names runs outright: each must be a migratable run of the old version, else
    the whole migration is refused. Without it, runs that cannot move now (running, say)
    are left alone and listed as `skipped`.
    """

    run_ids: list[RunId] | None = Field(
        default=None, min_length=1, max_length=MAX_MIGRATED_PER_CALL
    )
    status: list[RunStatus] | None = Field(default=None, min_length=1)
    reference_id: ReferenceId | None = None


class MigrateRunsRequest(RequestModel):
    """Move runs of `workflow` from `from_version` to `to_version` (another version)."""

    workflow: Name
    from_version: VersionName
    to_version: VersionName
    filter: MigrationFilter = Field(default_factory=MigrationFilter)
    limit: int = Field(default=MAX_MIGRATED_PER_CALL, ge=1, le=MAX_MIGRATED_PER_CALL)
    dry_run: StrictBool = Field(
        default=False,
        description="Move nothing: a live worker serving `to_version` replays each run (up to"
        " `MAX_DRY_RUNS_PER_CALL`) without side effects and reports what it would reuse.",
    )
    wait: Annotated[Duration, DurationRange(at_most=MAX_DRY_RUN_WAIT)] = duration_field(
        timedelta(seconds=30),
        description="How long a dry run waits for the worker's reports; runs not reported"
        " by then are listed in `not_replayed`.",
    )


class SkippedRun(ResponseModel):
    """A run the filter matched that was left on its version, and why."""

    run_id: RunId
    status: RunStatus
    reason: str


class NotReplayed(ResponseModel):
    """A run a dry run selected but has no report of, and why."""

    run_id: RunId
    reason: str


class MigrateRunsResponse(ResponseModel):
    """What a migration moved; each migrated run as it is now (on `to_version`).

    A dry run moves nothing (`migrated` is empty): `dry_runs` holds a report per run
    replayed, `not_replayed` the runs whose replay did not report in time or failed.
    """

    migrated: list[RunSummary]
    skipped: list[SkippedRun] = Field(default_factory=list)
    has_more: bool = Field(
        default=False, description="More runs matched than `limit`: call again for the rest."
    )
    to_version_served: bool = Field(
        description="Whether a live worker or endpoint serves the new version now; if not,"
        " migrated runs wait (queued ones stay queued) until one does."
    )
    warning: str | None = None
    dry_runs: list[DryRunReport] = Field(default_factory=list)
    not_replayed: list[NotReplayed] = Field(default_factory=list)


class RecordedCall(ResponseModel):
    """One task call of a run: its name, content address and occurrence."""

    name: str
    address: str
    occurrence: int


DryRunOutcome = Literal["runs_a_task", "waits", "completes", "fails", "writes"]
"""Where a dry run stopped: at the first task call it would run, at a wait (a sleep not
yet due, an event, a child), at the run's end (completed or failed), or at another write
(a child started, a webhook minted) it may not make."""


class DryRunReport(ResponseModel):
    """How a run would replay on another version, found without running anything.

    The replay runs the new version's code against the run's records and stops at the
    first call that has none (it cannot go past it without running it), so `would_run`
    is that first call only, and `not_reused` lists each recorded call the replay did
    not take up to there: changed away, or not reached before the stop.
    """

    run_id: RunId
    version: str = Field(description="The version replayed.")
    outcome: DryRunOutcome
    reused: list[RecordedCall] = Field(default_factory=list)
    would_run: RecordedCall | None = None
    not_reused: list[RecordedCall] = Field(default_factory=list)
    stopped_at: str = Field(description="Where the replay stopped, in words.")


FailureText = Annotated[str, StringConstraints(min_length=1, max_length=2000, pattern=NO_NUL)]


class DryRunAnswer(RequestModel):
    """What a worker reports for a dry-run job: the replay's report, or why it has none."""

    worker_id: WorkerName
    report: DryRunReport | None = None
    failure: FailureText | None = Field(
        default=None, description="The replay raised (or could not start): what happened."
    )

    # the rule of `_one_of`, stated for the OpenAPI document
    model_config = ConfigDict(json_schema_extra={"oneOf": [given("report"), given("failure")]})

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        if (self.report is None) == (self.failure is None):
            raise ValueError("a dry-run answer carries a report or a failure, not both or neither")
        return self


class DryRunReceipt(ResponseModel):
    """The server took a worker's answer to a dry-run job."""

    job_id: str
    run_id: RunId
