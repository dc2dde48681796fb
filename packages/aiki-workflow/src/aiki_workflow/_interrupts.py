"""Control flow of a run: abandoning it, pausing it. Not errors, so not `Exception`s."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiki_core import RunInterrupt

if TYPE_CHECKING:
    from aiki_core import AikiError


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
