"""An order-processing workflow, written as a user of Aiki would write it."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from aiki import RetryPolicy, TaskContext, WorkflowRun, task, workflow


class Order(BaseModel):
    """What the shop sends."""

    order_id: str
    amount: int
    items: list[str]


class Receipt(BaseModel):
    """What the workflow returns."""

    order_id: str
    payment: str
    tracking: str


class FlakyPaymentProvider:
    """A payment API that declines the first attempt of every charge, as real ones do."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def charge(self, amount: int, idempotency_key: str) -> str:
        """Charge `amount`; the first call per key fails."""
        self.calls[idempotency_key] = self.calls.get(idempotency_key, 0) + 1
        if self.calls[idempotency_key] == 1:
            raise ConnectionError("payment provider timed out")
        return f"txn-{abs(hash(idempotency_key)) % 10_000:04d}"


psp = FlakyPaymentProvider()


@task("reserve-stock")
async def reserve_stock(order: Order) -> list[str]:
    """Reserve every item of the order."""
    return [f"{item}:reserved" for item in order.items]


@task(
    "charge-card",
    retry=RetryPolicy.exponential(max_attempts=4, base_delay=timedelta(milliseconds=200)),
    timeout=timedelta(seconds=10),
)
def charge_card(order: Order, ctx: TaskContext) -> str:
    """Charge the customer; a plain function, so it runs in a worker thread."""
    return psp.charge(order.amount, idempotency_key=ctx.idempotency_key)


@task("ship")
async def ship(order_id: str, ctx: TaskContext) -> str:
    """Hand the parcel to the carrier."""
    ctx.log.info("shipping", {"order": order_id})
    return f"TRACK-{order_id.upper()}"


orders = workflow("order-processing")


@orders.v("1.0.0", timeout=timedelta(days=7))
async def orders_v1(run: WorkflowRun, order: Order) -> Receipt:
    """Reserve, charge, ship."""
    await reserve_stock.start(run, order)
    payment = await charge_card.start(run, order)
    tracking = await ship.start(run, order.order_id)
    run.log.info("order done", {"order": order.order_id})
    return Receipt(order_id=order.order_id, payment=payment, tracking=tracking)
