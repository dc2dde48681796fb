"""`ChildRun`: a child run as its parent's code sees it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar

from aiki_core import CodecContext
from aiki_core.sdk import raise_for_outcome

if TYPE_CHECKING:
    from collections.abc import Callable

    from pydantic import JsonValue

    from aiki_core import RunId
    from aiki_core.wire import TaskAddress
    from aiki_workflow._run import WorkflowRun

OutT = TypeVar("OutT")


class ChildRun(Generic[OutT]):
    """A child run started by `version.start_child(run, payload)`."""

    def __init__(
        self,
        parent: WorkflowRun,
        run_id: RunId,
        address: TaskAddress,
        occurrence: int,
        decode_result: Callable[[JsonValue], OutT],
    ) -> None:
        self.id = run_id
        self._parent = parent
        self._address = address
        self._occurrence = occurrence
        self._decode_result = decode_result

    async def result(self) -> OutT:
        """The child's result; the parent waits durably until the child ends.

        Raises `WorkflowFailedError` (with the child's error) or `WorkflowCancelledError`
        when the child did not complete, as `handle.result()` does for a client.
        """
        record = await self._parent.child_outcome(self.id, self._address, self._occurrence)
        codec = self._parent.codec
        error = record.error and record.error.open(codec, CodecContext.run(self.id, "error"))
        raise_for_outcome(self.id, record.status, error)
        return self._decode_result(codec.decode(record.result, CodecContext.run(self.id, "result")))

    def __repr__(self) -> str:
        return f"<ChildRun {self.id}>"
