"""What a run's end means to whoever waited for it: its result, or an error to raise."""

from __future__ import annotations

from aiki_core._error_info import ErrorInfo
from aiki_core._exceptions import WorkflowCancelledError, WorkflowFailedError
from aiki_core._status import RunStatus

__all__ = ["raise_for_outcome"]


def raise_for_outcome(run_id: str, status: RunStatus, error: ErrorInfo | None) -> None:
    """Return if the run completed; else raise `WorkflowCancelledError` or `WorkflowFailedError`.

    A failure is raised from the remote error rebuilt as an exception, with its causes.
    """
    if status is RunStatus.COMPLETED:
        return
    if status is RunStatus.CANCELLED:
        reason = error.details.get("reason") if error else None
        raise WorkflowCancelledError(run_id, None if reason is None else str(reason))
    failure = error or ErrorInfo(type="Unknown", message="the run failed")
    raise WorkflowFailedError(run_id, failure) from failure.to_exception()
