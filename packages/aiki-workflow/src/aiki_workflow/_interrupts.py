"""Control flow of a run: suspending it. Not errors, so not `Exception`s."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiki_core import RunInterrupt

if TYPE_CHECKING:
    from aiki_core import RunWait


class Suspend(RunInterrupt):
    """Unwinds the workflow because it must wait; the worker reports `waits` and lets go."""

    def __init__(self, waits: list[RunWait]) -> None:
        super().__init__(f"suspended on {len(waits)} wait(s)")
        self.waits = waits
