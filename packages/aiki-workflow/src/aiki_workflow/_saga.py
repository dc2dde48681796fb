"""`Saga`: compensations registered step by step, run newest first when a step fails.

    async with Saga(run) as saga:
        await book_flight.start(run, trip)
        saga.add(cancel_flight, trip)
        await book_hotel.start(run, trip)
        saga.add(cancel_hotel, trip)

If the block raises, the registered compensations run in reverse order, then the
error goes on. Compensations are tasks, so they run durably: after a crash in the
middle, the ones that ran are not run again and the rest are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self, TypeVar

if TYPE_CHECKING:
    from types import TracebackType

    from aiki_core.sdk import TaskRunContext
    from aiki_workflow._hooks import HookTask

PayloadT = TypeVar("PayloadT")


class Saga:
    """The compensations of the steps a run has taken so far."""

    def __init__(self, run: TaskRunContext) -> None:
        self._run = run
        self._compensations: list[tuple[HookTask[Any], object]] = []

    def add(self, compensation: HookTask[PayloadT], payload: PayloadT) -> None:
        """Register `compensation(payload)` to undo the step just taken."""
        self._compensations.append((compensation, payload))

    async def compensate(self) -> None:
        """Run the registered compensations, newest first (each once)."""
        while self._compensations:
            compensation, payload = self._compensations.pop()
            await compensation.start(self._run, payload)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, Exception):  # not a suspension or a cancellation
            await self.compensate()
