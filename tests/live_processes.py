"""Real processes for tests: `python -m aiki_server` and any other Python program.

The root `conftest.py` hands a `LiveProcesses` to a test as the `processes` fixture;
the classes live here, in an importable module, so test files can name them in
annotations (`tests/` is on `pythonpath` for pytest and on `mypy_path` for mypy).

Every process writes its stdout and stderr to a log file of its own; every process
still running when the fixture ends is SIGKILLed and reaped, and the logs are printed
(pytest shows them only for a failed test).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

from aiki_server.testing import ApiKey

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from anyio.abc import Process

STARTUP_TIMEOUT = 30.0
"""Seconds a server may take to answer `/health`."""
EXIT_TIMEOUT = 10.0
"""Seconds a killed or stopped process may take to exit."""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(eq=False)
class LiveProcess:
    """A child process and the file its stdout and stderr go to."""

    name: str
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

    def log_text(self) -> str:
        """Everything the process wrote so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL the process: no cleanup, no goodbye, like a power cut."""
        if self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGKILL)

    async def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Wait for the process to exit; its return code."""
        with anyio.fail_after(timeout):
            return await self.process.wait()

    async def stop(self, timeout: float = EXIT_TIMEOUT) -> int:
        """SIGTERM the process and wait for it to exit (SIGKILL after `timeout`)."""
        if self.process.returncode is None:
            self.process.terminate()
        with anyio.move_on_after(timeout):
            return await self.process.wait()
        self.kill()
        return await self.wait()


@dataclass(eq=False)
class ServerProcess(LiveProcess):
    """A live `python -m aiki_server` and where it listens."""

    db_url: str = ""
    port: int = 0

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`, what a `Client` takes."""
        return f"http://127.0.0.1:{self.port}"

    async def create_api_key(self, namespace: str) -> ApiKey:
        """A new key of `namespace`, by `aiki-server keys create` on the server's database.

        The server requires keys from then on, within `KEY_CACHE_TTL` for requests
        without one; the new key itself works at once.
        """
        key = (await _key_command("create", "--db", self.db_url, "--namespace", namespace)).strip()
        # a key is `aiki_<id>_<secret>`, its id a 26-character ULID
        return ApiKey(key.removeprefix("aiki_")[:26], namespace, key)

    async def revoke_api_key(self, key_id: str) -> None:
        """Revoke a key by `aiki-server keys revoke`; the server refuses it within the TTL."""
        await _key_command("revoke", "--db", self.db_url, key_id)


@dataclass(eq=False)
class LiveProcesses:
    """Starts processes for one test and SIGKILLs whatever still runs at its end."""

    log_dir: Path
    started: list[LiveProcess] = field(default_factory=list)

    async def spawn(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> LiveProcess:
        """Start `argv` (a `sys.executable` is not added), logging to `<name>.log`.

        `env` adds to (or overrides) this process's environment.
        """
        process, log = await self._open(name, argv, env)
        live = LiveProcess(name, process, log)
        self.started.append(live)
        return live

    async def start_server(self, db_url: str, *args: str, port: int | None = None) -> ServerProcess:
        """`python -m aiki_server --db db_url --port port *args`, once `/health` answers.

        `port` defaults to a free one; pass a dead server's port to restart it where
        its clients expect it. Extra `args` go to the command line, e.g.
        `"--claim-idle-timeout", "2"`.
        """
        port = free_port() if port is None else port
        argv = [
            sys.executable,
            "-m",
            "aiki_server",
            "--db",
            db_url,
            "--port",
            str(port),
            *args,
        ]
        process, log = await self._open("server", argv)
        server = ServerProcess("server", process, log, db_url=db_url, port=port)
        self.started.append(server)
        await _wait_healthy(server)
        return server

    async def _open(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> tuple[Process, Path]:
        log = self.log_dir / f"{name}-{len(self.started) + 1}.log"
        with log.open("ab") as log_file:
            process = await anyio.open_process(
                list(argv),
                stdin=None,
                stdout=log_file,
                stderr=log_file,
                env=None if env is None else {**os.environ, **env},
            )
        return process, log

    async def aclose(self) -> None:
        """SIGKILL and reap every process still running."""
        for live in self.started:
            live.kill()
        with anyio.CancelScope(shield=True):
            for live in self.started:
                with anyio.move_on_after(EXIT_TIMEOUT):
                    await live.process.wait()
                await live.process.aclose()

    def logs(self) -> str:
        """The log of every process started, in order."""
        return "".join(
            f"\n----- {live.log.name} (pid {live.pid}, exit {live.returncode}) -----\n"
            + live.log_text()
            for live in self.started
        )


async def _key_command(*args: str) -> str:
    """Run `python -m aiki_server keys *args`; its stdout (a failure fails the test)."""
    done = await anyio.run_process(
        [sys.executable, "-m", "aiki_server", "keys", *args], check=False
    )
    if done.returncode != 0:
        problem = done.stderr.decode(errors="replace")
        pytest.fail(f"aiki-server keys {' '.join(args)} exited {done.returncode}:\n{problem}")
    return done.stdout.decode()


async def _wait_healthy(server: ServerProcess) -> None:
    with anyio.fail_after(STARTUP_TIMEOUT):
        async with httpx.AsyncClient(base_url=server.base_url, timeout=2.0) as client:
            while True:
                if server.returncode is not None:
                    pytest.fail(f"server exited at start:\n{server.log_text()}")
                try:
                    response = await client.get("/health")
                except httpx.TransportError:
                    pass
                else:
                    if response.status_code == 200:
                        return
                await anyio.sleep(0.05)
