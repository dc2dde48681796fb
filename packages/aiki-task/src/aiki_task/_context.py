"""What a task's function may ask about the attempt it runs in."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiki_core import TaskCancelledError

if TYPE_CHECKING:
    from datetime import datetime

    from aiki_core import Logger, RunId
    from aiki_core.sdk import TaskAttemptInfo


@dataclass(frozen=True, slots=True)
class TaskContext:
    """Declare a parameter of this type (the second one) to receive it.

    `idempotency_key` is the same for every attempt and every replay of one task
    call: pass it to external APIs so a retried side effect happens once.
    `rate_limit_granted_at` is when the server granted the attempt's rate limit units
    (by the server's clock), for a task that declares a `RateLimit`.

    A plain (not `async`) function runs in a thread, which cannot be interrupted:
    when its attempt is cancelled (the run cancelled, the worker stopping, the
    task's timeout passed) `cancelled` turns true, and a long function should check
    it (or call `raise_if_cancelled()`) between steps and stop. An `async` function
    is cancelled where it awaits, and never needs to look.
    """

    run_id: RunId
    task_name: str
    attempt: int
    idempotency_key: str
    log: Logger
    rate_limit_granted_at: datetime | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    @property
    def cancelled(self) -> bool:
        """Whether this attempt was cancelled: a plain function should stop now."""
        return self._cancel.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise `TaskCancelledError` if this attempt was cancelled."""
        if self._cancel.is_set():
            raise TaskCancelledError(self.run_id, self.task_name, self.attempt)

    @classmethod
    def from_attempt(cls, info: TaskAttemptInfo) -> TaskContext:
        """The context of one attempt, as the engine describes it."""
        return cls(
            run_id=info.run_id,
            task_name=info.task_name,
            attempt=info.attempt,
            idempotency_key=info.idempotency_key,
            log=info.log,
            rate_limit_granted_at=info.rate_limit_granted_at,
        )
