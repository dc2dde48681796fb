"""What the SDK packages share and the server does not.

The SDK packages (`aiki_task`, `aiki_workflow`, `aiki_client`, `aiki_worker`) import
no sibling but `aiki_core`, so each seam between them is a protocol here:

- a task runs inside a run through `TaskRunContext`, which the workflow package's run
  object implements, and hands it a `TaskInvocation`; an attempt is a `TaskAttemptInfo`;
- a workflow version starts itself through `WorkflowStarter`, which the client
  implements, and gets back a `WorkflowRunHandle`; the client's schedules take a
  version as a `SchedulableVersion`, its run handles send an `EventDefinition`'s data;
- a worker executes any `ExecutableVersion`, giving it a `RunExecution`, and talks
  to the server through `WorkerApi`, which the client implements.

With them come the helpers more than one SDK package uses: `new_run_id` (the client
and a parent run mint the ids of the runs they start), `raise_for_outcome` (a run
handle and a parent run waiting on a child read a run's end alike) `intercepted`
(the client, the worker and a run call an `Interceptor`'s hooks alike) and
`fit_trace_context` (the client and a parent run send the carrier a start's hooks
wrote, trimmed to what the wire holds).
"""

from __future__ import annotations

from aiki_core._api import fit_trace_context
from aiki_core._ids import new_run_id
from aiki_core._interceptors import intercepted
from aiki_core._outcomes import raise_for_outcome
from aiki_core._protocols import (
    EventDefinition,
    ExecutableVersion,
    RunExecution,
    SchedulableVersion,
    TaskAttemptInfo,
    TaskInvocation,
    TaskRunContext,
    WorkerApi,
    WorkflowRunHandle,
    WorkflowStarter,
)
from aiki_core._public import show_public_path as _show_public_path

__all__ = (
    # seams between the packages
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
    # helpers
    "fit_trace_context",
    "intercepted",
    "new_run_id",
    "raise_for_outcome",
)

# reprs and docs show aiki_core.sdk.TaskRunContext, not aiki_core._protocols.TaskRunContext
_show_public_path(__name__, __all__, globals())
