"""In-process wake-ups for long-polls and the timer daemon.

A waiter subscribes to a topic *before* it checks the database, then waits on the
subscription; whoever changes the state publishes the topic after the commit. So a
change between the check and the wait is never missed. Topics: `QUEUE` (a run may
have become claimable), `TIMERS` (a new due time was set), `run_topic(id)` (the
run's status changed) and `worker_topic(namespace, id)` (a run the worker holds was
fenced, or its pause requested or withdrawn). Across server replicas, PostgreSQL
LISTEN/NOTIFY feeds the same hub.
"""

from __future__ import annotations

import anyio

QUEUE = "queue"
TIMERS = "timers"


def run_topic(run_id: str) -> str:
    """The topic published when a run's status changes."""
    return f"run:{run_id}"


def worker_topic(namespace: str, worker_id: str) -> str:
    """The topic published when a run the worker holds calls for another directive."""
    return f"worker:{namespace}:{worker_id}"


class Subscription:
    """One pending wake-up; `wait` returns when its topic is published or time runs out."""

    def __init__(self, event: anyio.Event) -> None:
        self._event = event

    async def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds; whether the topic was published."""
        with anyio.move_on_after(max(timeout, 0.0)):
            await self._event.wait()
        return self._event.is_set()


class WakeHub:
    """Topic → event; publishing sets the event and forgets it."""

    def __init__(self) -> None:
        self._events: dict[str, anyio.Event] = {}

    def subscribe(self, topic: str) -> Subscription:
        """Subscribe to the next publication of `topic`."""
        event = self._events.get(topic)
        if event is None:
            event = self._events[topic] = anyio.Event()
        return Subscription(event)

    def publish(self, topic: str) -> None:
        """Wake everyone subscribed to `topic`."""
        event = self._events.pop(topic, None)
        if event is not None:
            event.set()

    def publish_all(self) -> None:
        """Wake every waiter of every topic (after wake-ups may have been missed)."""
        events, self._events = self._events, {}
        for event in events.values():
            event.set()
