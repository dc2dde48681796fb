"""The workflows the dashboard's browser tests (and its screenshots) show.

`orders_v1` reserves stock, charges a card whose first attempt fails (so the task
timeline has a retry), then sleeps for an hour before it ships: a run stays
`sleeping` until the test acts on it. `audit_v1` fails for good. `refunds_v1` waits
for an `approved` event and returns who approved. `trips_v1` books, then holds the
booking for a day; cancelled, its `on_cancel` hook takes an hour to release the
deposit, so the run stays `cleaning_up` until the test acts on it.
"""

from __future__ import annotations

from datetime import timedelta

import anyio
from pydantic import BaseModel

from aiki_core import ErrorInfo, RetryPolicy
from aiki_task import TaskContext, task
from aiki_workflow import WorkflowRun, event, workflow


class Order(BaseModel):
    """What the shop sends."""

    order_id: str
    amount: int


@task("reserve-stock")
async def reserve_stock(order: Order) -> str:
    """Reserve the order's items."""
    return f"reserved:{order.order_id}"


@task(
    "charge-card",
    retry=RetryPolicy.exponential(max_attempts=3, base_delay=timedelta(milliseconds=100)),
)
async def charge_card(order: Order, ctx: TaskContext) -> str:
    """Charge the card; the first attempt of each charge times out."""
    if ctx.attempt == 1:
        raise ConnectionError("card network timed out")
    return f"txn-{order.order_id}"


@task("ship")
async def ship(order: Order) -> str:
    """Hand the parcel to the carrier."""
    return f"TRACK-{order.order_id.upper()}"


orders = workflow("order-processing")


@orders.v("1.0.0")
async def orders_v1(run: WorkflowRun, order: Order) -> dict[str, str]:
    """Reserve, charge, cool off for an hour, ship."""
    await reserve_stock.start(run, order)
    payment = await charge_card.start(run, order)
    await run.sleep("cool-off", timedelta(hours=1))
    return {"payment": payment, "tracking": await ship.start(run, order)}


@task("check-ledger", retry=RetryPolicy.never())
async def check_ledger(day: str) -> None:
    """Compare the ledger with the bank's; it never balances."""
    raise ValueError(f"ledger of {day} is off by 0.01")


audit = workflow("nightly-audit")


@audit.v("2.1.0")
async def audit_v1(run: WorkflowRun, day: str) -> None:
    """Check the day's ledger."""
    await check_ledger.start(run, day)


class Approval(BaseModel):
    """Who approved a refund."""

    by: str


approved = event("approved", Approval)
refunds = workflow("refund")


@refunds.v("1.0.0")
async def refunds_v1(run: WorkflowRun, order_id: str) -> str:
    """Wait for someone to approve the refund of the order."""
    got = await approved.wait(run)
    assert got.data is not None
    return f"refund of {order_id} approved by {got.data.by}"


@task("book-trip")
async def book_trip(destination: str) -> str:
    """Book the trip."""
    return f"booked:{destination}"


@task("release-deposit", retry=RetryPolicy.never())
async def release_deposit(error: ErrorInfo) -> None:
    """Release the trip's deposit: the bank takes an hour."""
    await anyio.sleep(3600)


trips = workflow("trip")


@trips.v("1.0.0", on_cancel=release_deposit)
async def trips_v1(run: WorkflowRun, destination: str) -> str:
    """Book, then hold the booking for a day."""
    booking = await book_trip.start(run, destination)
    await run.sleep("hold", timedelta(days=1))
    return booking
