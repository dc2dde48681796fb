"""In-process wake-ups for long-polls and the server's daemons.

A waiter subscribes to its topics *before* it checks the database, then waits on the
subscription; whoever changes the state publishes the topics after the commit. So a
change between the check and the wait is never missed. Topics are scoped, so that a
change wakes only the waiters it concerns:

- `queue_topic(namespace, workflow, version, pool)`: a run of the triple was queued
  (a claim long-poll subscribes to the topic of each triple it serves);
- `slots_topic(namespace, workflow)`: a slot of the workflow's concurrency limit was
  freed, or the limit changed (a run of any of its triples may now be claimed);
- `run_topic(id)`: the run's status changed (result waits);
- `worker_topic(namespace, id)`: a run the worker holds was fenced, or its pause
  requested or withdrawn (the worker's directives poll);
- `dry_run_topic(request)`: a worker reported a job of the dry run (the request waits);
- `QUEUE`: any run may have become claimable, in any namespace (the push dispatcher,
  one per server, looks at every endpoint then); `TIMERS`: a new due time was set.

Across server replicas, PostgreSQL LISTEN/NOTIFY feeds the same hub (and wakes every
waiter after its connection was lost); SQLite has one server process.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from types import TracebackType

QUEUE = "queue"
TIMERS = "timers"


def run_topic(run_id: str) -> str:
    """The topic published when a run's status changes."""
    return f"run:{run_id}"


def queue_topic(namespace: str, workflow: str, version: str, pool: str) -> str:
    """The topic published when a run of the triple is queued."""
    return _scoped("claim", namespace, workflow, version, pool)


def worker_topic(namespace: str, worker_id: str) -> str:
    """The topic published when a run the worker holds calls for another directive."""
    return _scoped("worker", namespace, worker_id)


def dry_run_topic(request_id: str) -> str:
    """The topic published when a worker reports one of a dry run's jobs."""
    return f"dry_run:{request_id}"


def slots_topic(namespace: str, workflow: str) -> str:
    """The topic published when the workflow's concurrency limit may let more runs go."""
    return _scoped("slots", namespace, workflow)


def queued_topics(namespace: str, workflow: str, version: str, pool: str) -> tuple[str, str]:
    """What a run queued publishes: its triple's claims, and the push dispatcher."""
    return queue_topic(namespace, workflow, version, pool), QUEUE


def slots_topics(namespace: str, workflow: str) -> tuple[str, str]:
    """What a slot freed (or a limit changed) publishes: the workflow's claims, the dispatcher."""
    return slots_topic(namespace, workflow), QUEUE


def _scoped(kind: str, *names: str) -> str:
    # lengths first: names may hold any character, the separator too
    return f"{kind}:{','.join(str(len(n)) for n in names)}:{''.join(names)}"


class Subscription:
    """Pending wake-ups on some topics; `wait` returns when one is published or time runs out.

    Use it as a context manager: leaving it unsubscribes.
    """

    def __init__(self, hub: WakeHub, topics: frozenset[str]) -> None:
        self._hub = hub
        self.topics = topics
        self._event = anyio.Event()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._hub.unsubscribe(self)

    def wake(self, topic: str) -> None:
        """Wake the waiter (once: later publications find it awake), counted by `topic`'s kind."""
        if not self._event.is_set():
            self._hub.wakeups[topic.partition(":")[0]] += 1
            self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds; whether a topic was published (since subscribing)."""
        with anyio.move_on_after(max(timeout, 0.0)):
            await self._event.wait()
        return self._event.is_set()


class WakeHub:
    """Topic → the subscriptions waiting on it; publishing wakes them."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[Subscription]] = {}
        self.wakeups: Counter[str] = Counter()
        """Subscriptions woken so far, by the kind of topic that woke them: `claim`,
        `slots`, `run`, `dry_run`, `queue`, `timers` (what the tests of scoped wake-ups observe)."""

    def subscribe(self, *topics: str) -> Subscription:
        """Subscribe to the next publication of any of `topics` (until the subscription is left)."""
        subscription = Subscription(self, frozenset(topics))
        for topic in subscription.topics:
            self._waiting.setdefault(topic, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget `subscription` on each of its topics."""
        for topic in subscription.topics:
            waiting = self._waiting.get(topic)
            if waiting is not None:
                waiting.discard(subscription)
                if not waiting:
                    del self._waiting[topic]

    @property
    def waiting(self) -> int:
        """How many subscriptions wait now."""
        return len({s for subscriptions in self._waiting.values() for s in subscriptions})

    def publish(self, topic: str) -> None:
        """Wake everyone subscribed to `topic`."""
        for subscription in self._waiting.pop(topic, ()):
            self.unsubscribe(subscription)  # woken: its other topics need it no more
            subscription.wake(topic)

    def publish_all(self) -> None:
        """Wake every waiter of every topic (after wake-ups may have been missed)."""
        for topic in list(self._waiting):
            self.publish(topic)
