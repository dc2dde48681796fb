"""Real `aiki-server` processes: started on a free port, waited for, stopped and reaped.

The implementation behind `aiki_server.testing.server_process` and its kin; the
repository's own tests, benchmarks and demo start their servers with it too.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from aiki_server._api_keys import KEY_PREFIX, ApiKey

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

    from anyio.abc import Process

STARTUP_TIMEOUT = 30.0
"""Seconds a server may take to answer `/health` once started."""
EXIT_TIMEOUT = 10.0
"""Seconds a stopped process may take to exit before it is killed."""
LOG_TAIL = 4000
"""Characters of a server's log that a `ServerStartError` shows."""


class ServerStartError(RuntimeError):
    """The server process exited, or did not answer `/health` in time, when it started."""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(eq=False)
class LoggedProcess:
    """A child process whose stdout and stderr go to the file `log`."""

    process: Process
    log: Path

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: the signal that ended it), or `None` while it runs."""
        return self.process.returncode

    def log_text(self, tail: int | None = None) -> str:
        """What the process wrote so far; only its last `tail` characters if given."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return text if tail is None else text[-tail:]

    def kill(self) -> None:
        """SIGKILL the process: no cleanup, no goodbye, like a power cut."""
        if self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGKILL)

    async def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Wait up to `timeout` seconds for the process to exit; its exit status."""
        with anyio.fail_after(timeout):
            return await self.process.wait()

    async def stop(self, timeout: float = EXIT_TIMEOUT) -> int:
        """SIGTERM the process and wait for it to exit (SIGKILL after `timeout` seconds)."""
        if self.process.returncode is None:
            self.process.terminate()
        with anyio.move_on_after(timeout):
            return await self.process.wait()
        self.kill()
        return await self.wait()

    async def aclose(self) -> None:
        """Stop the process (as `stop()`) and reap it, even when the caller is cancelled."""
        with anyio.CancelScope(shield=True):
            await self.stop()
            await self.process.aclose()


@dataclass(eq=False)
class ServerProcess(LoggedProcess):
    """A live `python -m aiki_server` and where it listens."""

    db_url: str
    port: int
    python: str = sys.executable
    """The interpreter that runs the server, and its `keys` commands."""

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`, what a `Client` takes."""
        return f"http://127.0.0.1:{self.port}"

    async def create_api_key(self, namespace: str) -> ApiKey:
        """A new key of `namespace`, by `aiki-server keys create` on the server's database.

        The server requires keys from then on (within `KEY_CACHE_TTL` for requests
        without one); the new key itself works at once.
        """
        created = await _keys(self.python, "create", "--db", self.db_url, "--namespace", namespace)
        key = created.strip()
        # a key is `aiki_<id>_<secret>`, its id a 26-character ULID
        return ApiKey(key.removeprefix(KEY_PREFIX)[:26], namespace, key)

    async def revoke_api_key(self, key_id: str) -> None:
        """Revoke a key by `aiki-server keys revoke`; the server refuses it within the TTL."""
        await _keys(self.python, "revoke", "--db", self.db_url, key_id)


async def start_process(
    argv: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None
) -> LoggedProcess:
    """Start `argv` (no `sys.executable` is added), appending its output to `log`.

    `env` adds to (or overrides) this process's environment.
    """
    with log.open("ab") as log_file:
        process = await anyio.open_process(
            list(argv),
            stdin=None,
            stdout=log_file,
            stderr=log_file,
            env=None if env is None else {**os.environ, **env},
        )
    return LoggedProcess(process, log)


async def start_server(
    db_url: str,
    *args: str,
    log: Path,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = STARTUP_TIMEOUT,
    python: str = sys.executable,
) -> ServerProcess:
    """`python -m aiki_server --db db_url --port port *args`, once `/health` answers 200.

    `port` defaults to a free one; pass a dead server's port to start it again where
    its clients expect it. `python` is the interpreter (another virtualenv's, say) that
    runs the server. Raises `ServerStartError` if something listens on the port
    already, and, with the end of the log, if the server exits or does not answer
    within `startup_timeout` seconds (it is killed).
    """
    port = free_port() if port is None else port
    if _taken(port):  # the server would fail to bind, and the other one answer `/health`
        raise ServerStartError(f"port {port} is taken: something on 127.0.0.1 listens on it")
    argv = [python, "-m", "aiki_server", "--db", db_url, "--port", str(port), *args]
    started = await start_process(argv, log, env=env)
    server = ServerProcess(started.process, log, db_url=db_url, port=port, python=python)
    try:
        await _wait_healthy(server, startup_timeout)
    except BaseException:
        server.kill()
        await server.aclose()
        raise
    return server


@asynccontextmanager
async def server_process(
    db_url: str,
    *args: str,
    port: int | None = None,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = STARTUP_TIMEOUT,
    python: str = sys.executable,
) -> AsyncIterator[ServerProcess]:
    """A live `aiki-server` on `db_url` for the block; stopped (SIGTERM, then SIGKILL) after.

    As `start_server`; the log goes to a temporary file unless `log` is given.
    """
    with tempfile.TemporaryDirectory(prefix="aiki-server-") as folder:
        log = log or Path(folder) / "server.log"
        server = await start_server(
            db_url,
            *args,
            log=log,
            port=port,
            env=env,
            startup_timeout=startup_timeout,
            python=python,
        )
        try:
            yield server
        finally:
            await server.aclose()


def _taken(port: int) -> bool:
    """Whether something listens on the loopback `port` (a closed one, in TIME_WAIT, is free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


async def _wait_healthy(server: ServerProcess, timeout: float) -> None:
    with anyio.move_on_after(timeout):
        while server.returncode is None:
            if await _answers_health(server.port):
                return
            await anyio.sleep(0.05)
        raise ServerStartError(
            f"the server exited ({server.returncode}) at start; its log:\n"
            + server.log_text(LOG_TAIL)
        )
    raise ServerStartError(
        f"the server did not answer /health within {timeout} s; its log:\n"
        + server.log_text(LOG_TAIL)
    )


async def _answers_health(port: int) -> bool:
    """Whether `GET /health` on the loopback `port` answers 200 (within 2 s)."""
    request = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    head = b""
    with anyio.move_on_after(2.0):
        try:
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                await stream.send(request.encode())
                while b"\r\n" not in head:
                    head += await stream.receive()
        except (OSError, anyio.EndOfStream, anyio.BrokenResourceError):
            return False
    return head.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 "))


async def _keys(python: str, *args: str) -> str:
    """Run `python -m aiki_server keys *args`; its stdout."""
    done = await anyio.run_process([python, "-m", "aiki_server", "keys", *args], check=False)
    if done.returncode != 0:
        command = " ".join(args)
        problem = done.stderr.decode(errors="replace")
        raise RuntimeError(f"aiki-server keys {command} exited {done.returncode}:\n{problem}")
    return done.stdout.decode()
