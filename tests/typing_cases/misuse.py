"""Misuses of the public API that mypy must reject; each marked line is one error.

This file is not part of the type-checked tree: tests/test_typing.py runs mypy on
it and checks that exactly the lines with an error comment are reported.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel

from aiki_task import TaskContext, remote_task, task
from aiki_workflow import WorkflowRun, workflow

if TYPE_CHECKING:
    from aiki_client import Client
    from aiki_core.wire import ClaimedRun


class Order(BaseModel):
    order_id: str


class Receipt(BaseModel):
    txn: str


@task("charge")
async def charge(order: Order, ctx: TaskContext) -> str:
    return order.order_id


orders = workflow("orders")


@orders.v("1")
async def orders_v1(run: WorkflowRun, order: Order) -> Receipt:
    txn: str = await charge.start(run, order)
    wrong: int = await charge.start(run, order)  # error: a task's result type
    await charge.start(run, "not an order")  # error: a task's payload type
    return Receipt(txn=txn + str(wrong))


class Image(BaseModel):
    url: str


class Thumb(BaseModel):
    url: str
    width: int


resize = remote_task("resize-image", input=Image, output=Thumb, timeout=timedelta(seconds=20))


@orders.v("2")
async def orders_v2(run: WorkflowRun, order: Order) -> Receipt:
    txn: str = await charge.remote().start(run, order)
    thumb: Thumb = await resize.start(run, Image(url="u"))
    width: str = await resize.start(run, Image(url="u"))  # error: a remote task's result type
    await resize.start(run, order)  # error: a remote task's payload type
    again: int = await charge.remote().start(run, order)  # error: the shared definition's result
    return Receipt(txn=txn + thumb.url + width + str(again))


class Db:
    name = "orders-db"


def open_db(claim: ClaimedRun) -> Db:
    return Db()


async def open_db_async(claim: ClaimedRun) -> Db:
    return Db()


@orders.v("3", create_context=open_db)
async def orders_v3(run: WorkflowRun[Db], order: Order) -> str:
    name: str = run.ctx.name
    wrong: int = run.ctx.name  # error: run.ctx is typed by the version's factory
    return name + str(wrong)


@orders.v("4", create_context=open_db_async)
async def orders_v4(run: WorkflowRun[Db], order: Order) -> str:
    return run.ctx.name


@orders.v("5", create_context=open_db_async)  # error: the run's context type is not the factory's
async def orders_v5(run: WorkflowRun[int], order: Order) -> str:
    return str(run.ctx)


async def misuse(client: Client) -> None:
    handle = await orders_v1.start(client, Order(order_id="o-1"))
    receipt: Receipt = await handle.result()
    amount: int = await handle.result()  # error: the run's result type
    await orders_v1.start(client, {"order_id": "o-1"})  # error: the start payload type
    await orders_v1.start(client, Order(order_id="o-2"), reference_id=7)  # error: option type
    schedules = client.schedules
    await schedules.create("s", orders_v1, Order(order_id="o-3"), every=timedelta(hours=1))
    await schedules.create("s", orders_v1, {"order_id": "o"}, cron="@daily")  # error: its payload
    print(receipt, amount)  # noqa: T201
