"""`raise_for_outcome`: what a run's end means to whoever waited for it."""

from __future__ import annotations

import pytest

from aiki_core import ErrorInfo, RunStatus, WorkflowCancelledError, WorkflowFailedError
from aiki_core.sdk import raise_for_outcome


def test_a_completed_run_raises_nothing() -> None:
    raise_for_outcome("r-1", RunStatus.COMPLETED, None)


def test_a_cancelled_run_raises_with_its_reason() -> None:
    error = ErrorInfo(type="x", message="cancelled", details={"reason": "no longer needed"})
    with pytest.raises(WorkflowCancelledError) as caught:
        raise_for_outcome("r-1", RunStatus.CANCELLED, error)
    assert (caught.value.run_id, caught.value.reason) == ("r-1", "no longer needed")


def test_a_failed_run_raises_from_its_rebuilt_error() -> None:
    cause = ErrorInfo(type="KeyError", message="k")
    error = ErrorInfo(type="builtins.ValueError", message="bad", cause=cause)
    with pytest.raises(WorkflowFailedError) as caught:
        raise_for_outcome("r-1", RunStatus.FAILED, error)
    assert caught.value.error == error
    assert caught.value.__cause__ is not None
    assert "bad" in str(caught.value.__cause__)
