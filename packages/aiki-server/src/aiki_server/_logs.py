"""The server's log: one `Logger` per process, chosen by `aiki-server --log-format/--log-level`.

Each module writes through `component(name)`, a logger that looks the process's
logger up at every record, so the command line can choose it after the modules are
imported. Uvicorn's own records (its errors, and its access log when asked for) go
through the same logger (`route_stdlib`), so every line has one format.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiki_core import ConsoleLogger, LogLevel

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aiki_core import Logger

_process: list[Logger] = [ConsoleLogger()]


def use(logger: Logger) -> None:
    """Write every server record to `logger` from now on."""
    _process[0] = logger


class _Component:
    """A `Logger` bound to ids that writes to the process's logger of the moment."""

    def __init__(self, bound: Mapping[str, object]) -> None:
        self._bound = dict(bound)

    def _merge(self, metadata: Mapping[str, object] | None) -> dict[str, object]:
        return {**self._bound, **metadata} if metadata else self._bound

    def trace(self, message: str, metadata: Mapping[str, object] | None = None) -> None:
        _process[0].trace(message, self._merge(metadata))

    def debug(self, message: str, metadata: Mapping[str, object] | None = None) -> None:
        _process[0].debug(message, self._merge(metadata))

    def info(self, message: str, metadata: Mapping[str, object] | None = None) -> None:
        _process[0].info(message, self._merge(metadata))

    def warn(self, message: str, metadata: Mapping[str, object] | None = None) -> None:
        _process[0].warn(message, self._merge(metadata))

    def error(self, message: str, metadata: Mapping[str, object] | None = None) -> None:
        _process[0].error(message, self._merge(metadata))

    def child(self, metadata: Mapping[str, object]) -> Logger:
        return _Component(self._merge(metadata))


def component(name: str) -> Logger:
    """The logger of one part of the server: its records carry `component=name`."""
    return _Component({"component": name})


def run_ids(run: Mapping[str, Any]) -> dict[str, object]:
    """The ids every record about a run carries."""
    return {
        "run_id": run["id"],
        "workflow": run["workflow"],
        "version": run["version"],
        "namespace": run["namespace"],
    }


class _StdlibRoute(logging.Handler):
    """Hands the `logging` records of uvicorn to the server's logger."""

    _LEVELS = (
        (logging.ERROR, "error"),
        (logging.WARNING, "warn"),
        (logging.INFO, "info"),
        (logging.DEBUG, "debug"),
    )

    def emit(self, record: logging.LogRecord) -> None:
        log = component(record.name)
        write = next((name for at, name in self._LEVELS if record.levelno >= at), "trace")
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            client, method, path, _http, status = args
            metadata = {"client": client, "method": method, "path": path, "status": status}
            getattr(log, write)("request", metadata)
            return
        getattr(log, write)(record.getMessage())


def route_stdlib(level: LogLevel, *, access_log: bool) -> None:
    """Send uvicorn's `logging` records through the server's logger.

    Its warnings and errors, and with `access_log` one info record per request; its
    chatter about starting and stopping only at debug level.
    """
    route = _StdlibRoute()
    for name, floor in (("uvicorn.error", logging.WARNING), ("uvicorn.access", logging.INFO)):
        logger = logging.getLogger(name)
        logger.handlers = [route]
        logger.propagate = False
        logger.setLevel(max(level, floor) if level > LogLevel.DEBUG else logging.DEBUG)
        logger.disabled = name == "uvicorn.access" and not access_log
