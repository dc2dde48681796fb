"""`@task` on its own: validation, contexts, threads and timeouts, through a minimal run."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
import pytest
from pydantic import BaseModel

from aiki_core import ConsoleLogger, PayloadValidationError, RetryPolicy, RunId, TaskTimeoutError
from aiki_core.sdk import TaskAttemptInfo
from aiki_core.wire import TaskAddress
from aiki_task import Task, TaskContext, task

if TYPE_CHECKING:
    from collections.abc import Callable

    from pydantic import JsonValue

    from aiki_core import Logger
    from aiki_core.sdk import TaskInvocation


class Order(BaseModel):
    order_id: str
    amount: int


class OneShotRun:
    """A run that executes every call once, as a worker would on a first execution."""

    def __init__(self) -> None:
        self.id = RunId("run-1")
        self.log: Logger = ConsoleLogger()
        self.inputs: list[JsonValue] = []
        self.abandoned: list[Callable[[], bool]] = []
        """`still_running` of each thread an attempt left running when cancelled."""

    async def execute_task(self, invocation: TaskInvocation) -> JsonValue:
        self.inputs.append(invocation.input)
        info = TaskAttemptInfo(
            run_id=self.id,
            task_name=invocation.name,
            address=TaskAddress(f"{invocation.name}:abc"),
            occurrence=0,
            attempt=1,
            log=self.log,
            abandoned=self.abandoned.append,
        )
        return await invocation.run_attempt(info)


@task("charge", retry=RetryPolicy.fixed(max_attempts=2, delay=timedelta(seconds=1)))
async def charge(order: Order, ctx: TaskContext) -> str:
    return f"{order.order_id}:{order.amount}:{ctx.attempt}:{ctx.idempotency_key}"


@task("thread-name")
def thread_name(label: str) -> str:
    return f"{label}:{threading.current_thread().name}"


@task("wrong-result")
async def wrong_result(n: int) -> int:
    return "not a number"  # type: ignore[return-value]


@task("slow", timeout=timedelta(milliseconds=50))
async def slow(n: int) -> int:
    await anyio.sleep(5)
    return n


async def test_an_async_task_gets_its_validated_payload_and_context() -> None:
    run = OneShotRun()
    result = await charge.start(run, Order(order_id="o-1", amount=5))
    assert result == "o-1:5:1:run-1:charge:abc:0"
    assert run.inputs == [{"order_id": "o-1", "amount": 5}]


async def test_a_payload_is_coerced_by_its_annotation() -> None:
    run = OneShotRun()
    result = await charge.start(run, {"order_id": "o-2", "amount": "7"})  # type: ignore[arg-type]
    assert result.startswith("o-2:7:")


async def test_a_plain_function_runs_in_a_worker_thread() -> None:
    result = await thread_name.start(OneShotRun(), "x")
    assert result.startswith("x:")
    assert result != f"x:{threading.main_thread().name}"


async def test_an_invalid_payload_names_the_task_and_the_field() -> None:
    run = OneShotRun()
    with pytest.raises(PayloadValidationError) as caught:
        await charge.start(run, {"order_id": "o-3", "amount": "lots"})  # type: ignore[arg-type]
    assert "'charge'" in caught.value.message
    assert "amount" in caught.value.message
    assert caught.value.errors[0]["loc"] == ["amount"]
    assert run.inputs == []  # nothing ran


async def test_a_result_of_the_wrong_type_is_rejected() -> None:
    with pytest.raises(PayloadValidationError, match="'wrong-result'"):
        await wrong_result.start(OneShotRun(), 1)


def test_a_recorded_result_is_validated_again() -> None:
    assert charge.decode_result("fine") == "fine"
    with pytest.raises(PayloadValidationError, match="'charge'"):
        charge.decode_result({"not": "a string"})


async def test_a_timeout_cancels_the_attempt() -> None:
    with anyio.fail_after(2):
        with pytest.raises(TaskTimeoutError) as caught:
            await slow.start(OneShotRun(), 1)
    error = caught.value
    assert (error.task_name, error.attempt, error.timeout_ms) == ("slow", 1, 50)
    assert error.run_id == "run-1"


STEPS_DONE: list[int] = []


@task("careful", timeout=timedelta(milliseconds=50))
def careful(steps: int, ctx: TaskContext) -> int:
    """Steps of 10 ms, until the attempt is cancelled."""
    for step in range(steps):
        ctx.raise_if_cancelled()
        threading.Event().wait(0.01)
        STEPS_DONE.append(step)
    return steps


@task("careless", timeout=timedelta(milliseconds=50))
def careless(gate: str) -> str:
    """Waits for `GATES[gate]`, whatever happens to its attempt."""
    GATES[gate].wait(10)
    return gate


GATES: dict[str, threading.Event] = {}


async def test_a_plain_task_sees_its_cancellation_and_stops() -> None:
    run = OneShotRun()
    with pytest.raises(TaskTimeoutError):
        await careful.start(run, 1000)
    with anyio.fail_after(5):
        while run.abandoned and run.abandoned[0]():  # noqa: ASYNC110 - a thread: it stops at its next step
            await anyio.sleep(0.01)
    settled = len(STEPS_DONE)
    await anyio.sleep(0.05)
    assert len(STEPS_DONE) == settled < 1000


async def test_a_plain_task_that_ignores_it_is_handed_to_the_watch() -> None:
    GATES["g"] = threading.Event()
    run = OneShotRun()
    with pytest.raises(TaskTimeoutError):
        await careless.start(run, "g")
    [still_running] = run.abandoned
    assert still_running()
    GATES["g"].set()
    with anyio.fail_after(5):
        while still_running():  # noqa: ASYNC110 - a thread, no event to await
            await anyio.sleep(0.01)


async def test_a_context_is_not_cancelled_until_its_attempt_is() -> None:
    assert await careful.start(OneShotRun(), 2) == 2


def test_with_options_copies_and_keeps_the_rest() -> None:
    quick = charge.with_options(timeout=timedelta(seconds=1))
    assert isinstance(quick, Task)
    assert quick.timeout == timedelta(seconds=1)
    assert quick.retry == charge.retry
    assert charge.timeout is None
    assert quick.with_options(retry=None).retry is None


def test_a_function_with_too_many_parameters_is_refused() -> None:
    def three(a: int, b: int, c: int) -> int:
        return a

    with pytest.raises(TypeError, match="'bad'"):
        task("bad")(three)  # type: ignore[arg-type]
