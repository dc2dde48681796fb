"""Real processes for tests: `python -m aiki_server` and any other Python program.

The root `conftest.py` hands a `LiveProcesses` to a test as the `processes` fixture;
the class lives here, in an importable module, so test files can name it in
annotations (`tests/` is on `pythonpath` for pytest and on `mypy_path` for mypy).
The processes it starts are `aiki_server.testing`'s `LoggedProcess` and
`ServerProcess`, which start, wait for and stop them.

Every process writes its stdout and stderr to a log file of its own; every process
still running when the fixture ends is SIGKILLed and reaped, and the logs are printed
(pytest shows them only for a failed test).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from aiki_server.testing import start_process, start_server

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from aiki_server.testing import LoggedProcess, ServerProcess


@dataclass(eq=False)
class LiveProcesses:
    """Starts processes for one test and SIGKILLs whatever still runs at its end."""

    log_dir: Path
    started: list[LoggedProcess] = field(default_factory=list)

    async def spawn(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> LoggedProcess:
        """Start `argv` (a `sys.executable` is not added), logging to `<name>-<n>.log`.

        `env` adds to (or overrides) this process's environment.
        """
        live = await start_process(argv, self._log(name), env=env)
        self.started.append(live)
        return live

    async def start_server(
        self,
        db_url: str,
        *args: str,
        port: int | None = None,
        name: str = "server",
        startup_timeout: float | None = None,
        python: str = sys.executable,
    ) -> ServerProcess:
        """`python -m aiki_server --db db_url --port port *args`, once `/health` answers.

        `port` defaults to a free one; pass a dead server's port to restart it where
        its clients expect it. Extra `args` go to the command line, e.g.
        `"--claim-idle-timeout", "2"`. A server that does not start raises
        `ServerStartError` (with the end of its log) and is killed. `python` is the
        interpreter that runs it; `startup_timeout` (seconds) overrides the harness's.
        """
        log = self._log(name)
        if startup_timeout is None:
            server = await start_server(db_url, *args, log=log, port=port, python=python)
        else:
            server = await start_server(
                db_url, *args, log=log, port=port, python=python, startup_timeout=startup_timeout
            )
        self.started.append(server)
        return server

    def _log(self, name: str) -> Path:
        return self.log_dir / f"{name}-{len(self.started) + 1}.log"

    async def aclose(self) -> None:
        """SIGKILL and reap every process still running."""
        for live in self.started:
            live.kill()
        with anyio.CancelScope(shield=True):
            for live in self.started:
                await live.aclose()

    def logs(self) -> str:
        """The log of every process started, in order."""
        return "".join(
            f"\n----- {live.log.name} (pid {live.pid}, exit {live.returncode}) -----\n"
            + live.log_text()
            for live in self.started
        )
