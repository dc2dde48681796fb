"""Control flow of a run: abandoning, pausing, continuing it as new. Not `Exception`s."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiki_core import RunInterrupt

if TYPE_CHECKING:
    from pydantic import JsonValue

    from aiki_core import AikiError, RunId


class Abandon(RunInterrupt):
    """Unwinds the workflow because the run cannot be written; the worker lets it go.

    The server is out of reach, the claim was lost, or the server refused the API key
    (`cause`): not a failure of the workflow. The run is replayed from what was
    recorded, by this worker or another.
    """

    def __init__(self, cause: AikiError) -> None:
        super().__init__(f"run abandoned: {cause.message}")
        self.cause = cause


class PauseAtBoundary(RunInterrupt):
    """Unwinds the workflow before a task starts because the run was paused.

    Every task that finished is on record or travels with the release; the next one
    has not begun. The worker releases the run, and the server pauses it.
    """

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} paused: stopped before its next task")


class ContinueAsNew(RunInterrupt):
    """Unwinds the workflow to end the run and start a fresh one (`run.continue_as_new`).

    Carries the new run's id and its input, already sealed to that id.
    """

    def __init__(self, run_id: RunId, sealed_input: JsonValue) -> None:
        super().__init__(f"continued as run {run_id}")
        self.run_id = run_id
        self.sealed_input = sealed_input
