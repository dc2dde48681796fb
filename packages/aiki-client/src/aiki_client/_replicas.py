"""Failover between server replicas: `Client(["http://a:9850", "http://b:9850"])`.

Replicas share one database, so any of them answers any call. A call goes to the
replica that answered last (sticky: a dead first URL costs one failed connect, not
one per call). When that replica cannot be reached, the call goes to the next:

- no connection could be opened (refused, no route, DNS, connect timeout): the
  request never left, so any call goes on to the next replica;
- the connection dropped after the request was sent (reset, closed, read timeout):
  the server may have done it, so only a call that is safe to repeat goes on (reads,
  settings put or patched, and the writes the server takes twice as once: starts, by
  the run id the client mints; task records, heartbeats, directives polls, children,
  rate limit units); any other (a POST, a DELETE, whose repeat would answer 404 for
  what it deleted) raises `ServerUnavailableError`, as with one URL.

An HTTP answer, even a 5xx, is the server's word and is not tried elsewhere. Each
replica is tried once per round; with every one unreachable, the rounds are tried
again `connect_retries` times, with a doubling back-off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from aiki_client._http import CONNECT_BACKOFF, Unreachable
from aiki_core import ServerUnavailableError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiki_client._http import Answer, Http


class Replicas:
    """Sends each request to the replica that answered last, failing over to the others."""

    def __init__(self, replicas: Sequence[Http], *, connect_retries: int) -> None:
        if not replicas:
            raise ValueError("at least one server URL is needed")
        self.replicas = list(replicas)
        """The replicas' request paths, in the order they are tried."""
        self._connect_retries = connect_retries
        self.current = 0
        """The index of the replica that answered last."""

    async def send(
        self,
        method: str,
        path: str,
        body: bytes | None,
        params: Sequence[tuple[str, str]],
        *,
        repeatable: bool,
    ) -> Answer:
        """Send one request; `repeatable` if it may be sent again after a dropped connection."""
        delay = CONNECT_BACKOFF
        count = len(self.replicas)
        for round_ in range(self._connect_retries + 1):
            first = self.current
            for step in range(count):
                index = (first + step) % count
                try:
                    answer = await self.replicas[index].send(method, path, body, params)
                except Unreachable:
                    last = round_ == self._connect_retries and step == count - 1
                    if last:
                        raise
                    continue
                except ServerUnavailableError:  # sent, then lost: maybe done
                    if not repeatable or step == count - 1:
                        raise
                    continue
                self.current = index
                return answer
            await anyio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def aclose(self) -> None:
        """Close every replica's connections."""
        for replica in self.replicas:
            await replica.aclose()
