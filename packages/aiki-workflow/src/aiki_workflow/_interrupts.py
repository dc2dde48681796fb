"""Control flow of a run: abandoning it. Not an error, so not an `Exception`."""

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
