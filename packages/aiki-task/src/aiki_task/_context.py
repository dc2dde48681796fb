"""What a task's function may ask about the attempt it runs in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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
    """

    run_id: RunId
    task_name: str
    attempt: int
    idempotency_key: str
    log: Logger
    rate_limit_granted_at: datetime | None = None

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
