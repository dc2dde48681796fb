"""Control flow of a run: suspending or abandoning it. Not errors, so not `Exception`s."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiki_core import RunInterrupt

if TYPE_CHECKING:
    from aiki_core import AikiError, RunWait


class Suspend(RunInterrupt):
    """Unwinds the workflow because it must wait; the worker reports `waits` and lets go."""

    def __init__(self, waits: list[RunWait]) -> None:
        super().__init__(f"suspended on {len(waits)} wait(s)")
        self.waits = waits


class Abandon(RunInterrupt):
    """Unwinds the workflow because the run cannot be written; the worker lets it go.

    The server is out of reach, or the claim was lost (`cause`): not a failure of the
    workflow. The run is replayed from what was recorded, by this worker or another.
    """

    def __init__(self, cause: AikiError) -> None:
        super().__init__(f"run abandoned: {cause.message}")
        self.cause = cause
