"""Lifecycle hooks of a workflow version: tasks before and after the body, and on events.

    @orders.v("1.0.0", before=[reserve], after=[release], on_error=alert)

Every hook is a task, so it runs durably and at most once to completion: on replay
a hook that ran returns its recorded result. `before` tasks take the run's payload
and run before the body; `after` tasks take it too and run once the run ends, after
`on_complete` (which takes the result) or `on_error` (which takes the error, as an
`ErrorInfo` without its stack, so that a replay calls it with the same input).
An attempt that will be retried under the version's retry policy has not ended: its
`on_error` and `after` tasks wait for the last attempt. `on_sleep` takes a
`SleepInfo` and runs each time the run is about to sleep.

A run cancelled or timed out after it ran runs its hooks in its cleanup: `on_cancel`
(which takes the cancellation's `ErrorInfo`) or, for a timeout, `on_error`, then the
`after` tasks; `on_complete` does not run, whatever the code returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from aiki_core import WorkflowCancelledError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiki_core import ErrorInfo
    from aiki_core.sdk import TaskRunContext

PayloadT_contra = TypeVar("PayloadT_contra", contravariant=True)


class HookTask(Protocol[PayloadT_contra]):
    """A task as a hook sees it (an `aiki_task.Task`)."""

    async def start(self, run: TaskRunContext, payload: PayloadT_contra, /) -> object:
        """Run the task in `run` (or take its recorded result)."""
        ...


class SleepInfo(BaseModel):
    """The sleep an `on_sleep` hook is told about: it ends `duration` after it begins.

    The hook runs before the server registers the sleep, whose due time the server's
    clock sets: it knows how long the run sleeps, not until when.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    occurrence: int
    duration: timedelta


@dataclass(frozen=True, slots=True)
class Hooks:
    """The lifecycle tasks of one workflow version."""

    before: Sequence[HookTask[Any]] = ()
    after: Sequence[HookTask[Any]] = ()
    on_complete: HookTask[Any] | None = None
    on_error: HookTask[ErrorInfo] | None = None
    on_sleep: HookTask[SleepInfo] | None = field(default=None)
    on_cancel: HookTask[ErrorInfo] | None = None

    async def run_before(self, run: TaskRunContext, payload: object) -> None:
        """The `before` tasks, in order."""
        for hook in self.before:
            await hook.start(run, payload)

    async def run_completed(self, run: TaskRunContext, payload: object, result: object) -> None:
        """`on_complete`, then the `after` tasks."""
        if self.on_complete is not None:
            await self.on_complete.start(run, result)
        await self._run_after(run, payload)

    async def run_failed(self, run: TaskRunContext, payload: object, error: ErrorInfo) -> None:
        """`on_error`, then the `after` tasks."""
        if self.on_error is not None:
            await self.on_error.start(run, _without_stacks(error))
        await self._run_after(run, payload)

    async def run_cleanup(self, run: TaskRunContext, payload: object, error: ErrorInfo) -> None:
        """A cancelled run's `on_cancel`, a timed-out one's `on_error`; then the `after` tasks."""
        if error.code == WorkflowCancelledError.code:
            if self.on_cancel is not None:
                await self.on_cancel.start(run, _without_stacks(error))
            await self._run_after(run, payload)
        else:
            await self.run_failed(run, payload, error)

    async def _run_after(self, run: TaskRunContext, payload: object) -> None:
        for hook in self.after:
            await hook.start(run, payload)


def _without_stacks(error: ErrorInfo) -> ErrorInfo:
    cause = None if error.cause is None else _without_stacks(error.cause)
    return error.model_copy(update={"stack": None, "cause": cause})
