"""How the client's requests travel: through httpx, over the network or a given transport.

Over the network, httpx's own transport keeps a pool of HTTP/1.1 connections alive
between requests, verifies TLS as `verify=`/`cert=` say, and (with `trust_env`) takes
its proxies and CA bundle from the environment, as httpx does. `transport=` replaces
the network: `httpx.ASGITransport` to reach an embedded server in process,
`httpx.MockTransport` in a test, or any custom transport.

A request whose connection could not be opened never reached the server: it raises
`Unreachable`, after `connect_retries` more attempts with a doubling back-off (a
certificate refused is not tried again: it will not mend itself). A request that
was sent and then lost (reset, closed, timed out) raises `ServerUnavailableError`:
the server may have done it, so only a GET is sent once more, on a fresh connection
(RFC 9112 §9.3.1); a POST is never sent twice.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol, TypeAlias
from urllib.parse import quote, urlsplit

import anyio
import httpx

from aiki_core import ServerUnavailableError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

CONNECT_TIMEOUT = 10.0
"""Seconds to open a connection."""
READ_TIMEOUT = 75.0
"""Seconds to wait for an answer: long-polls hold a request up to a minute."""
DEFAULT_TIMEOUT = httpx.Timeout(CONNECT_TIMEOUT, read=READ_TIMEOUT, pool=None)
"""Connect and write within 10 s, an answer within 75 s; a request waits as long as it
takes for a free connection of the pool (as many as `MAX_CONNECTIONS`)."""
CONNECT_BACKOFF = 0.1
"""Seconds before the first new connect attempt; doubled for each one after."""
KEEPALIVE_SECONDS = 4.0
"""Idle connections are closed before uvicorn's 5 s keep-alive could close them under us."""
MAX_CONNECTIONS = 200
"""Connections open at once to one server, each kept alive when idle."""

Verify: TypeAlias = bool | str | os.PathLike[str] | ssl.SSLContext
"""Whether and how to verify the server's TLS certificate (see `Client`)."""
Cert: TypeAlias = str | tuple[str, str] | tuple[str, str, str]
"""A client certificate: its file, with its key's file and the key's password if apart."""


class Answer(NamedTuple):
    """An HTTP answer: its status, its whole body, and its `Retry-After` header, if any."""

    status: int
    body: bytes
    retry_after: str | None = None


def unavailable(base_url: str, exc: BaseException) -> ServerUnavailableError:
    """The error for a request that could not be carried to `base_url`."""
    return ServerUnavailableError(f"cannot reach the Aiki server at {base_url}: {exc!r}")


class Unreachable(ServerUnavailableError):
    """No connection to the server could be opened: the request never left the client.

    So it is safe to send anywhere else, whatever it does (see `_replicas`).
    """

    def __init__(self, base_url: str, exc: BaseException) -> None:
        super().__init__(f"cannot connect to the Aiki server at {base_url}: {exc!r}")


def api_path(*segments: str) -> str:
    """A path under the API's prefix, each segment percent-encoded whole.

    Ids come from callers (a run id from a query string, say): encoded, one cannot
    reach another route, or end the request line and smuggle a second request.
    """
    return "".join("/" + quote(segment, safe="") for segment in segments)


def tls_context(verify: Verify, cert: Cert | None, *, trust_env: bool) -> ssl.SSLContext | bool:
    """What httpx is given as `verify`: `verify` itself, or a context built from it.

    A CA bundle's path (a file, or a directory of hashed certificates) and a client
    certificate become an `ssl.SSLContext` here, as httpx asks of its callers now.
    """
    if cert is None and isinstance(verify, bool | ssl.SSLContext):
        return verify
    if isinstance(verify, ssl.SSLContext):
        raise ValueError("cert= with an ssl.SSLContext: load the certificate into the context")
    try:
        if isinstance(verify, bool):
            context = httpx.create_ssl_context(verify=verify, trust_env=trust_env)
        elif Path(verify).is_dir():
            context = ssl.create_default_context(capath=verify)
        else:
            context = ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"verify={verify!r}: cannot load the CA certificates: {exc}") from exc
    if cert is not None:
        try:
            if isinstance(cert, str):
                context.load_cert_chain(cert)
            else:
                context.load_cert_chain(*cert)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cert={cert!r}: cannot load the client certificate: {exc}") from exc
    return context


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
    """Requests to one server through an httpx client: pooled keep-alive HTTP/1.1."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        connect_retries: int,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        trust_env: bool = True,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        self.base_url = base_url
        self.connect_retries = connect_retries
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            transport=transport,
            verify=verify,
            trust_env=trust_env,
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS,
                max_keepalive_connections=MAX_CONNECTIONS,
                keepalive_expiry=KEEPALIVE_SECONDS,
            ),
        )

    async def send(
        self, method: str, path: str, body: bytes | None, params: Sequence[tuple[str, str]]
    ) -> Answer:
        """Send one request and read the whole answer."""
        headers = _JSON if body is not None else None
        request = self._client.build_request(
            method, path, content=body, params=list(params), headers=headers
        )
        delay = CONNECT_BACKOFF
        attempt = 0
        again = method == "GET"  # safe to repeat once if lost in transit
        while True:
            try:
                response = await self._client.send(request)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                tls = _tls_error(exc)
                if tls is not None:  # a handshake refused will not mend itself
                    raise _tls_unavailable(self.base_url, tls) from exc
                if attempt == self.connect_retries:
                    raise Unreachable(self.base_url, _root(exc)) from exc
                attempt += 1
                await anyio.sleep(delay)
                delay *= 2
                continue
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                if not again:
                    raise unavailable(self.base_url, exc) from exc
                again = False
                continue
            except httpx.TransportError as exc:
                raise unavailable(self.base_url, exc) from exc
            return Answer(
                response.status_code, response.content, response.headers.get("retry-after")
            )

    async def aclose(self) -> None:
        """Close the httpx client (and so its connections, or its transport)."""
        await self._client.aclose()


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it, and so on to the first error."""
    cause: BaseException | None = exc
    while cause is not None:
        yield cause
        cause = cause.__cause__ or cause.__context__


def _root(exc: BaseException) -> BaseException:
    """The first error of a chain: what the system said (refused, no such host)."""
    *_, first = _chain(exc)
    return first


def _tls_error(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error under an httpx connect error, if the handshake was what failed."""
    return next((e for e in _chain(exc) if isinstance(e, ssl.SSLError)), None)


def _tls_unavailable(base_url: str, exc: ssl.SSLError) -> ServerUnavailableError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ServerUnavailableError(
            f"the Aiki server at {base_url} has a TLS certificate this client does not "
            f"trust ({exc.verify_message}): pass `verify=` the CA bundle that signed it"
        )
    return ServerUnavailableError(f"no TLS session with the Aiki server at {base_url}: {exc!r}")


_JSON = {"content-type": "application/json"}
