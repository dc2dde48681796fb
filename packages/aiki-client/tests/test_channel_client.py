"""The client's channel over real sockets, against a WebSocket server of the test's own.

The server here speaks WebSocket (the `websockets` library) and answers the channel's
frames as the test says, or not at all.
"""

from __future__ import annotations

import ipaddress
import ssl
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.server import ServerConnection, serve

from aiki_client import Client
from aiki_core import RunId, ServerUnavailableError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from websockets.asyncio.server import Server


@asynccontextmanager
async def silent_channel_server() -> AsyncIterator[tuple[Server, list[bytes]]]:
    """A server that opens the channel, reads every frame, and answers none."""
    frames: list[bytes] = []

    async def handler(ws: ServerConnection) -> None:
        async for frame in ws:
            assert isinstance(frame, bytes)
            frames.append(frame)

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        yield server, frames


async def test_the_read_timeout_of_the_client_holds_on_the_channel() -> None:
    """`Client(timeout=...)` bounds a call on the channel as it bounds a plain request."""
    async with silent_channel_server() as (server, frames):
        port = server.sockets[0].getsockname()[1]
        timeout = httpx.Timeout(10.0, read=0.5)
        async with Client(f"http://127.0.0.1:{port}", timeout=timeout) as client:
            with anyio.fail_after(10), pytest.raises(ServerUnavailableError):
                await client.run_handle(RunId("r1")).cancel("why")
    assert frames[0].startswith(b"1 POST /runs/r1/cancel\n")


async def test_a_read_in_flight_when_the_client_closes_opens_no_channel_again() -> None:
    """Closing the client drops the calls in flight; a read among them is not sent once
    more on a channel opened anew, which nothing would ever close."""
    opened = 0
    frames = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal opened, frames
        opened += 1
        async for _ in ws:  # read every frame, answer none
            frames += 1

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        client = Client(f"http://127.0.0.1:{port}")
        failed = anyio.Event()

        async def read() -> None:
            with pytest.raises(ServerUnavailableError):
                await client.run_handle(RunId("r1")).status()
            failed.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            with anyio.fail_after(10):
                while not frames:  # noqa: ASYNC110 - the server's own progress
                    await anyio.sleep(0.01)
            await client.aclose()
            with anyio.fail_after(10):
                await failed.wait()
        assert opened == 1


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, and its key: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aiki channel test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return folder / "cert.pem", folder / "key.pem"


async def test_the_channel_trusts_the_certificates_plain_requests_trust(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`verify=True` with `trust_env=False` is certifi's bundle alone, on the channel as on
    plain requests: not the CA file of the environment (nor the system's store)."""
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    frames: list[bytes] = []

    async def handler(ws: ServerConnection) -> None:
        async for frame in ws:
            assert isinstance(frame, bytes)
            frames.append(frame)

    async with serve(handler, "127.0.0.1", 0, ssl=context, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"https://127.0.0.1:{port}"
        timeout = httpx.Timeout(10.0, read=0.5)
        async with Client(url, trust_env=False, timeout=timeout, channel=False) as plain:
            with pytest.raises(ServerUnavailableError, match="does not trust"):
                await plain.run_handle(RunId("r1")).cancel("why")
        async with Client(url, trust_env=False, timeout=timeout, connect_retries=0) as client:
            with anyio.fail_after(10), pytest.raises(ServerUnavailableError):
                await client.run_handle(RunId("r1")).cancel("why")
    assert frames == []  # no call went to a server the client does not trust
