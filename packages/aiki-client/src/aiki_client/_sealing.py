"""The client's side of the codec: seal what it sends, open what it reads.

A run's input is sealed to the run's id, which the client mints before the start
(`new_run_id`); a schedule's input to the schedule's id. With the sealed input goes
its fingerprint, a hash keyed like the run's task addresses, so a repeated start
with the same reference id is recognised although its ciphertext differs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from aiki_core import CodecContext
from aiki_core.wire import content_hash

if TYPE_CHECKING:
    from pydantic import JsonValue

    from aiki_core import ErrorInfo, PayloadCodec
    from aiki_core.wire import RunDetail, Schedule, TaskRecord


def seal_input(
    codec: PayloadCodec, value: JsonValue, context: CodecContext
) -> tuple[JsonValue, str]:
    """The sealed input and its fingerprint."""
    sealed = codec.encode(value, context)
    return sealed, content_hash(value, key=codec.address_key(sealed))


def open_schedule(codec: PayloadCodec, schedule: Schedule) -> Schedule:
    """A schedule with its input opened."""
    opened = codec.decode(schedule.input, CodecContext.schedule_input(schedule.id))
    return schedule.model_copy(update={"input": opened})


def open_detail(codec: PayloadCodec, detail: RunDetail) -> RunDetail:
    """A run's detail with every payload and error opened (raises `CodecError` if one can't)."""
    run_id = detail.id

    def error(info: ErrorInfo | None, context: CodecContext) -> ErrorInfo | None:
        return None if info is None else info.open(codec, context)

    def task(record: TaskRecord) -> TaskRecord:
        def slot(part: Literal["input", "result", "error"]) -> CodecContext:
            return CodecContext.task(run_id, record.address, record.occurrence, part)

        return record.model_copy(
            update={
                "input": codec.decode(record.input, slot("input")),
                "result": None
                if record.result is None
                else codec.decode(record.result, slot("result")),
                "error": error(record.error, slot("error")),
                "attempts": [
                    a.model_copy(update={"error": error(a.error, slot("error"))})
                    for a in record.attempts
                ],
            }
        )

    return detail.model_copy(
        update={
            "input": codec.decode(detail.input, CodecContext.run_input(run_id, detail.schedule_id)),
            "result": None
            if detail.result is None
            else codec.decode(detail.result, CodecContext.run(run_id, "result")),
            "error": error(detail.error, CodecContext.run(run_id, "error")),
            "tasks": [task(t) for t in detail.tasks],
            "events": [
                e
                if e.origin == "webhook"
                else e.model_copy(
                    update={"data": codec.decode(e.data, CodecContext.event(run_id, e.name))}
                )
                for e in detail.events
            ],
            "children": [
                c.model_copy(
                    update={
                        "result": None
                        if c.result is None
                        else codec.decode(c.result, CodecContext.run(c.run_id, "result")),
                        "error": error(c.error, CodecContext.run(c.run_id, "error")),
                    }
                )
                for c in detail.children
            ],
        }
    )
