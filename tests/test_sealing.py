"""Every payload is sealed to its slot, and opened in the same slot.

A test codec wraps each value with the slot (`CodecContext`) it was sealed for and a
nonce, and refuses to open it in any other slot, as an encrypting codec's associated
data would. Runs on the harness (embedded server on SQLite and PostgreSQL, a client
and a worker in the test's process) exercise every kind of payload: a run's input,
result and error, task inputs, results and errors, events from the client and from a
webhook, a child's input, result and error, and a schedule's input. What the server
holds is read raw, without the codec, to show it only ever saw sealed values.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from pydantic import BaseModel

from aiki_client import Client
from aiki_core import (
    CodecContext,
    ConsoleLogger,
    DecryptionError,
    LogLevel,
    ReferenceIdConflictError,
    RetryPolicy,
    RunId,
    RunStatus,
    WorkflowFailedError,
)
from aiki_core.wire import content_hash
from aiki_server.testing import embedded_server
from aiki_task import task
from aiki_worker import Worker
from aiki_workflow import WorkflowRun, event, workflow

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from pydantic import JsonValue

    from aiki_core.sdk import WorkflowRunHandle
    from aiki_server.testing import EmbeddedServer

QUIET = ConsoleLogger(LogLevel.ERROR)
WAIT = timedelta(seconds=15)
SEALED = "$sealed"
FLAKY_CALLS: list[str] = []
RETRY_NOW = RetryPolicy.exponential(max_attempts=3, base_delay=timedelta(milliseconds=10))


class BindingCodec:
    """Seals a value to its slot with a fresh nonce; opens it only in that slot."""

    def address_key(self, run_input: JsonValue) -> bytes | None:
        """A key named by the sealed run input, as an encrypting codec's would be."""
        sealed = run_input[SEALED] if isinstance(run_input, dict) else None
        assert isinstance(sealed, dict), f"not a sealed run input: {run_input!r}"
        return b"address key of " + str(sealed["key"]).encode()

    def encode(self, value: JsonValue, context: CodecContext) -> JsonValue:
        """Wrap `value` with its slot."""
        slot = {"run": context.run_id, "field": context.field}
        return {SEALED: {**slot, "key": "k1", "nonce": os.urandom(4).hex(), "value": value}}

    def decode(self, value: JsonValue, context: CodecContext) -> JsonValue:
        """Unwrap `value` if it was sealed for this slot."""
        if not (isinstance(value, dict) and isinstance(value.get(SEALED), dict)):
            raise DecryptionError("k1", f"not sealed: {value!r}")
        sealed: dict[str, Any] = value[SEALED]  # type: ignore[assignment]
        if (sealed["run"], sealed["field"]) != (context.run_id, context.field):
            elsewhere = f"{sealed['run']}/{sealed['field']}"
            raise DecryptionError("k1", f"sealed for {elsewhere}, not {context}")
        opened: JsonValue = sealed["value"]
        return opened


class Order(BaseModel):
    order_id: str
    amount: int


class Approval(BaseModel):
    by: str


approved = event("approved", Approval)
delivered = event("delivered", Approval)


@task("seal-double")
async def double(amount: int) -> int:
    """Double the amount."""
    return amount * 2


@task("seal-flaky")
async def flaky(order_id: str) -> str:
    """Fail the first call of each order with a message that names the order."""
    FLAKY_CALLS.append(order_id)
    if FLAKY_CALLS.count(order_id) == 1:
        raise RuntimeError(f"card declined for {order_id}")
    return f"charged {order_id}"


child = workflow("seal-child")


@child.v("1")
async def child_v1(run: WorkflowRun, amount: int) -> int:
    """Fail on a negative amount; else double it."""
    if amount < 0:
        raise ValueError(f"negative amount {amount}")
    return await double.start(run, amount)


parent = workflow("seal-parent")


@parent.v("1", retry=None)
async def parent_v1(run: WorkflowRun, order: Order) -> dict[str, Any]:
    """Touch every kind of payload once."""
    doubled = await double.start(run, order.amount)
    charged = await flaky.with_options(retry=RETRY_NOW).start(run, order.order_id)
    approval = await approved.wait(run, timeout=timedelta(minutes=5))
    url = await run.webhook_url(delivered, expires=timedelta(hours=1))
    delivery = await delivered.wait(run, timeout=timedelta(minutes=5))
    kid = await child_v1.start_child(run, order.amount)
    failing = await child_v1.start_child(run, -1)
    try:
        await failing.result()
        child_error = ""
    except WorkflowFailedError as exc:
        child_error = str(exc.__cause__)
    if order.order_id == "fail":
        raise RuntimeError(f"order {order.order_id} cannot ship")
    return {
        "doubled": doubled,
        "charged": charged,
        "approved_by": approval.data.by if approval.data else None,
        "delivered_by": delivery.data.by if delivery.data else None,
        "child": await kid.result(),
        "child_error": child_error,
        "url": url,
    }


@pytest.fixture(autouse=True)
def _reset() -> None:
    FLAKY_CALLS.clear()


@pytest.fixture
async def server(db_url: str) -> AsyncIterator[EmbeddedServer]:
    async with embedded_server(db_url) as embedded:
        yield embedded


@pytest.fixture
async def raw(server: EmbeddedServer) -> AsyncIterator[httpx.AsyncClient]:
    """The API as it is, without a codec: what the server holds."""
    transport = httpx.ASGITransport(app=server.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://aiki.test") as http:
        yield http


@pytest.fixture
async def client(server: EmbeddedServer) -> AsyncIterator[Client]:
    transport = httpx.ASGITransport(app=server.app)
    codec = BindingCodec()
    async with Client("http://aiki.test", transport=transport, codec=codec, logger=QUIET) as c:
        yield c


async def _drive(
    client: Client, raw: httpx.AsyncClient, order: Order
) -> WorkflowRunHandle[dict[str, Any]]:
    """Start the parent, send its event, post its webhook; its handle."""
    handle = await parent_v1.start(client, order, reference_id=order.order_id)
    await handle.wait_for_status([RunStatus.AWAITING_EVENT], timeout=WAIT)
    await handle.send_event(approved, Approval(by="alice"))
    url = await _webhook_url(client, handle.id)
    posted = await raw.post(url.removeprefix("http://aiki.test"), json={"by": "courier"})
    assert posted.status_code == 200, posted.text
    return handle


async def _webhook_url(client: Client, run_id: RunId) -> str:
    for _ in range(300):
        detail = await client.run_handle(run_id).detail()
        minted = [t for t in detail.tasks if t.name == "aiki.webhook" and t.result]
        if minted:
            return str(minted[0].result)
        await anyio.sleep(0.02)
    raise AssertionError("no webhook URL was minted")


def _sealed_for(value: JsonValue) -> tuple[str, str]:
    assert isinstance(value, dict) and SEALED in value, f"not sealed: {value!r}"
    sealed = value[SEALED]
    assert isinstance(sealed, dict)
    return str(sealed["run"]), str(sealed["field"])


async def test_every_payload_is_sealed_to_its_slot_and_opened_there(
    client: Client, raw: httpx.AsyncClient
) -> None:
    order = Order(order_id="o-1", amount=21)
    async with Worker(client, [parent_v1, child_v1], logger=QUIET):
        handle = await _drive(client, raw, order)
        result = await handle.result(timeout=WAIT)

    assert result["doubled"] == 42
    assert result["charged"] == "charged o-1"
    assert (result["approved_by"], result["delivered_by"]) == ("alice", "courier")
    assert result["child"] == 42
    assert "negative amount -1" in result["child_error"]

    stored = (await raw.get(f"/api/v1/runs/{handle.id}")).json()
    assert _sealed_for(stored["input"]) == (handle.id, "input")
    assert _sealed_for(stored["result"]) == (handle.id, "result")
    for stored_task in stored["tasks"]:
        slot = f"task:{stored_task['address']}:{stored_task['occurrence']}"
        assert _sealed_for(stored_task["input"]) == (handle.id, f"{slot}:input")
        assert _sealed_for(stored_task["result"]) == (handle.id, f"{slot}:result")
        # addresses are keyed: the server cannot confirm a guessed input by hashing it
        assert not stored_task["address"].endswith(content_hash(order.amount))
    (failed_attempt,) = [
        a for t in stored["tasks"] for a in t["attempts"] if a["error"] is not None
    ]
    assert "o-1" not in str(failed_attempt["error"]["message"])
    assert failed_attempt["error"]["type"] == "RuntimeError"  # the type stays in clear
    by_origin = {e["origin"]: e for e in stored["events"]}
    assert _sealed_for(by_origin["api"]["data"]) == (handle.id, "event:approved")
    assert by_origin["webhook"]["data"] == {"by": "courier"}  # posted in clear by its sender
    for kid in stored["children"]:
        kid_stored = (await raw.get(f"/api/v1/runs/{kid['run_id']}")).json()
        assert _sealed_for(kid_stored["input"]) == (kid["run_id"], "input")
        if kid["status"] == "failed":
            assert _sealed_for(kid_stored["error"]["sealed"]) == (kid["run_id"], "error")
            assert "-1" not in kid_stored["error"]["message"]

    # the client opens all of it again
    detail = await handle.detail()
    assert detail.input == order.model_dump()
    by_name = {t.name: t for t in detail.tasks}
    assert by_name["seal-flaky"].input == "o-1"
    assert by_name["seal-flaky"].result == "charged o-1"
    (error,) = [a.error for a in by_name["seal-flaky"].attempts if a.error is not None]
    assert error.message == "card declined for o-1"
    assert error.sealed is None
    assert {e.name: e.data for e in detail.events} == {
        "approved": {"by": "alice"},
        "delivered": {"by": "courier"},
    }
    assert sorted(str(c.error.message) for c in detail.children if c.error) == [
        "negative amount -1"
    ]


async def test_a_run_error_is_sealed_and_reaches_result_opened(
    client: Client, raw: httpx.AsyncClient
) -> None:
    async with Worker(client, [parent_v1, child_v1], logger=QUIET):
        handle = await _drive(client, raw, Order(order_id="fail", amount=1))
        with pytest.raises(WorkflowFailedError) as failed:
            await handle.result(timeout=WAIT)
    assert "order fail cannot ship" in str(failed.value.__cause__)
    stored = (await raw.get(f"/api/v1/runs/{handle.id}")).json()
    assert _sealed_for(stored["error"]["sealed"]) == (handle.id, "error")
    assert "cannot ship" not in str(stored["error"]["message"])
    opened = (await handle.detail()).error
    assert opened is not None
    assert opened.message == "order fail cannot ship"


async def test_a_repeated_start_is_recognised_by_its_fingerprint(client: Client) -> None:
    order = Order(order_id="o-same", amount=3)
    first = await parent_v1.start(client, order, reference_id="same")
    again = await parent_v1.start(client, order, reference_id="same")
    assert again.id == first.id  # though each start sealed the input with a fresh nonce
    with pytest.raises(ReferenceIdConflictError):
        await parent_v1.start(client, Order(order_id="o-other", amount=3), reference_id="same")


async def test_a_value_moved_to_another_run_is_refused(
    client: Client, raw: httpx.AsyncClient
) -> None:
    one = await child_v1.start(client, 1)
    two = await child_v1.start(client, 2)
    stored_one = (await raw.get(f"/api/v1/runs/{one.id}")).json()
    # the server hands run one's input to a worker of run two
    with pytest.raises(DecryptionError):
        BindingCodec().decode(stored_one["input"], CodecContext.run_input(two.id))


doubler = workflow("seal-scheduled")


@doubler.v("1")
async def doubler_v1(run: WorkflowRun, amount: int) -> int:
    """Double the scheduled amount."""
    return await double.start(run, amount)


async def test_a_schedule_input_is_sealed_to_the_schedule_its_runs_name(
    server: EmbeddedServer, client: Client, raw: httpx.AsyncClient
) -> None:
    schedule = await client.schedules.create("seal-tick", doubler_v1, 5, every=timedelta(hours=1))
    assert schedule.input == 5  # opened by the client
    stored = (await raw.get(f"/api/v1/schedules/{schedule.id}")).json()
    assert _sealed_for(stored["input"]) == (f"schedule:{schedule.id}", "input")
    server.advance(timedelta(hours=1))
    async with Worker(client, [doubler_v1], logger=QUIET):
        run_id = None
        for _ in range(500):
            page = await client.list_runs(workflow="seal-scheduled")
            if page.runs:
                run_id = page.runs[0].id
                break
            await anyio.sleep(0.02)
        assert run_id is not None, "the schedule did not fire"
        handle = client.run_handle(run_id)
        assert await handle.result(timeout=WAIT) == 10
    assert (await handle.detail()).schedule_id == schedule.id
