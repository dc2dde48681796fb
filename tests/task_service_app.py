"""A task service for the remote task tests: tasks served by `aiki_task.asgi_app` alone.

It imports nothing but `aiki_task`, `aiki_core` and pydantic, so it runs in a venv
holding only those (and uvicorn): `uvicorn --factory task_service_app:create_app`.
The workflows of the tests import the same definitions (`resize_image.remote()`).
Every attempt that runs appends a line to the ledger file `AIKI_TASK_LEDGER`: the
tests count what ran, and the flaky tasks count their own attempts there. The slow
tasks outlast the server's wait for an answer in the tests (1 s): their runs go on
without the worker; each notes its end too (`<name>-done`).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from pydantic import BaseModel

from aiki_core import RetryPolicy
from aiki_task import TaskContext, asgi_app, task

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

SECRET_VARIABLE = "AIKI_PUSH_SECRET"
LEDGER_VARIABLE = "AIKI_TASK_LEDGER"
SLOW_SECONDS = 3.0
"""How long a slow task's attempt takes: past the tests' wait, well within its timeout."""


class Image(BaseModel):
    url: str
    width: int


class Thumb(BaseModel):
    url: str
    width: int


def _note(ctx: TaskContext) -> int:
    """Append this attempt to the ledger; how many attempts of the call ran so far."""
    ledger = Path(os.environ[LEDGER_VARIABLE])
    with ledger.open("a") as out:
        out.write(f"{ctx.task_name} {ctx.idempotency_key} {ctx.attempt}\n")
    lines = ledger.read_text().splitlines()
    return sum(1 for line in lines if line.split()[:2] == [ctx.task_name, ctx.idempotency_key])


@task("resize-image")
async def resize_image(image: Image, ctx: TaskContext) -> Thumb:
    _note(ctx)
    return Thumb(url=f"{image.url}?w=64", width=64)


@task("flaky-resize", retry=RetryPolicy.fixed(max_attempts=3, delay=timedelta(milliseconds=200)))
def flaky_resize(image: Image, ctx: TaskContext) -> Thumb:
    """Fails the first two times it runs for a call, then succeeds (a plain function)."""
    if _note(ctx) <= 2:
        raise ConnectionError(f"the image store is down (attempt {ctx.attempt})")
    return Thumb(url=f"{image.url}?w=32", width=32)


def _done(ctx: TaskContext) -> None:
    """Note in the ledger that this attempt ended (its answer is on its way)."""
    with Path(os.environ[LEDGER_VARIABLE]).open("a") as out:
        out.write(f"{ctx.task_name}-done {ctx.idempotency_key} {ctx.attempt}\n")


@task("slow-resize", timeout=timedelta(seconds=8))
async def slow_resize(image: Image, ctx: TaskContext) -> Thumb:
    _note(ctx)
    await anyio.sleep(SLOW_SECONDS)
    _done(ctx)
    return Thumb(url=f"{image.url}?w=16", width=16)


@task(
    "slow-flaky",
    retry=RetryPolicy.fixed(max_attempts=3, delay=timedelta(milliseconds=200)),
    timeout=timedelta(seconds=8),
)
async def slow_flaky(image: Image, ctx: TaskContext) -> Thumb:
    """Slow, and fails the first time it runs for a call, then succeeds."""
    first = _note(ctx) == 1
    await anyio.sleep(SLOW_SECONDS)
    _done(ctx)
    if first:
        raise ConnectionError(f"the image store is down (attempt {ctx.attempt})")
    return Thumb(url=f"{image.url}?w=8", width=8)


TASKS = [resize_image, flaky_resize, slow_resize, slow_flaky]


def create_app() -> Callable[..., Awaitable[None]]:
    """The service, with the endpoint's secret from the environment."""
    return asgi_app(TASKS, secrets=[os.environ[SECRET_VARIABLE]])
