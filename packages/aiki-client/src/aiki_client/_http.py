"""How the client's requests travel: over the network, or through an httpx transport.

The network path (`SocketHttp`, in `_socket_http`) is the hot path of every worker.
`transport=` keeps httpx's interface for everything else: `httpx.ASGITransport` to
reach an embedded server in process, `httpx.MockTransport` in a test, or any custom
transport. Both raise `ServerUnavailableError` when a request could not be carried
(`Unreachable` when it never left: no connection could be opened).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote

import httpx

from aiki_client._socket_http import (
    CONNECT_TIMEOUT,
    READ_TIMEOUT,
    Answer,
    Unreachable,
    unavailable,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


def api_path(*segments: str) -> str:
    """A path under the API's prefix, each segment percent-encoded whole.

    Ids come from callers (a run id from a query string, say): encoded, one cannot
    reach another route, or end the request line and smuggle a second request.
    """
    return "".join("/" + quote(segment, safe="") for segment in segments)


class Http(Protocol):
    """Sends one request under the API's base URL; answers the status and the body."""

    async def send(
        self, method: str, path: str, body: bytes | None, params: Sequence[tuple[str, str]]
    ) -> Answer:
        """Send one request and read the whole answer."""
        ...

    async def aclose(self) -> None:
        """Close the connections."""
        ...


class HttpxHttp:
    """Requests through an httpx transport (in process, mocked, or custom)."""

    def __init__(
        self, base_url: str, headers: Mapping[str, str], transport: httpx.AsyncBaseTransport
    ) -> None:
        self.base_url = base_url
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            transport=transport,
            timeout=httpx.Timeout(CONNECT_TIMEOUT, read=READ_TIMEOUT),
        )

    async def send(
        self, method: str, path: str, body: bytes | None, params: Sequence[tuple[str, str]]
    ) -> Answer:
        """Send one request through the transport."""
        try:
            response = await self._client.request(
                method,
                path,
                content=body,
                params=list(params),
                headers=_JSON if body is not None else None,
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise Unreachable(self.base_url, exc) from exc
        except httpx.TransportError as exc:
            raise unavailable(self.base_url, exc) from exc
        return Answer(response.status_code, response.content, response.headers.get("retry-after"))

    async def aclose(self) -> None:
        """Close the httpx client (and so its transport)."""
        await self._client.aclose()


_JSON = {"content-type": "application/json"}
