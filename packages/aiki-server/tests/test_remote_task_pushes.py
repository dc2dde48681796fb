"""Remote task calls side by side, against a real (slow, failing) task endpoint.

The endpoint is a socket of the test's: it reads each push whole, waits a little and
answers 503, counting what it got. The server's clock is the test's, so a back-off
written on the endpoint's row holds for the whole test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from aiki_server.testing import free_port
from server_api import claim_one, start

if TYPE_CHECKING:
    from anyio.abc import SocketStream, TaskStatus

    from conftest import HarnessFactory


class SlowFailingEndpoint:
    """Answers every push `503` after `delay` seconds; `pushes` counts them."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.pushes = 0
        self.port = free_port()

    async def serve(self, *, task_status: TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
        async with listener:
            task_status.started()
            await listener.serve(self._answer)

    async def _answer(self, stream: SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(body) < length:
                body += await stream.receive()
            self.pushes += 1
            await anyio.sleep(self.delay)
            await stream.send(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")


async def test_calls_waiting_for_a_busy_endpoint_honour_the_back_off_its_failure_wrote(
    make_harness: HarnessFactory,
) -> None:
    # five calls for an endpoint that takes one push at a time: the first push fails and
    # backs the endpoint off. Before, the four waiting calls chose from the endpoints
    # they read before waiting, and pushed one after another to the failing endpoint
    # regardless of its back-off (and of its circuit once five had failed)
    endpoint = SlowFailingEndpoint(delay=0.3)
    async with make_harness() as h, anyio.create_task_group() as tg:
        await tg.start(endpoint.serve)
        created = await h.client.post(
            "/endpoints",
            json={
                "url": f"http://127.0.0.1:{endpoint.port}/",
                "tasks": ["resize"],
                "max_in_flight": 1,
            },
        )
        assert created.status_code == 201, created.text
        run = await start(h.client)
        held = await claim_one(h.client)
        call = {
            "revision": held["run"]["revision"],
            "name": "resize",
            "address": "resize:1",
            "occurrence": 0,
            "attempt": 1,
            "input": None,
        }
        answers: list[dict[str, Any]] = []

        async def call_once() -> None:
            r = await h.client.post(f"/runs/{run['id']}/remote-tasks", json=call)
            assert r.status_code == 200, r.text
            answers.append(r.json())

        async with anyio.create_task_group() as calls:
            for _ in range(5):
                calls.start_soon(call_once)
        tg.cancel_scope.cancel()
    assert endpoint.pushes == 1
    assert [a["error"]["code"] for a in answers] == ["server_unavailable"] * 5
