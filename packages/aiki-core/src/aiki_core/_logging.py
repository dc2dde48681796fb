"""The `Logger` protocol and its two implementations.

Every Aiki component logs through a `Logger`: five levels that take a message and a
metadata mapping, plus `child(metadata)` to bind ids (the client binds nothing, a
worker binds its id, each run binds workflow, version and run id). Bring your own
by implementing the protocol, or use `ConsoleLogger` (the default, one line per
record on stderr), `JsonLogger` (one JSON object per line, for log collectors) or
`StdlibLogger` (forwards to a `logging.Logger`).
"""

from __future__ import annotations

import json
import logging
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import IntEnum
from typing import Protocol, Self, TextIO, runtime_checkable

__all__ = ["ConsoleLogger", "JsonLogger", "LogLevel", "Logger", "StdlibLogger"]

Metadata = Mapping[str, object]


class LogLevel(IntEnum):
    """Severity of a log record; the values line up with `logging`'s levels."""

    TRACE = 5
    DEBUG = logging.DEBUG
    INFO = logging.INFO
    WARN = logging.WARNING
    ERROR = logging.ERROR


@runtime_checkable
class Logger(Protocol):
    """Where Aiki components write what they do."""

    def trace(self, message: str, metadata: Metadata | None = None) -> None:
        """Record fine-grained detail (each request, each replayed result)."""

    def debug(self, message: str, metadata: Metadata | None = None) -> None:
        """Record diagnostic detail."""

    def info(self, message: str, metadata: Metadata | None = None) -> None:
        """Record a normal event worth knowing about."""

    def warn(self, message: str, metadata: Metadata | None = None) -> None:
        """Record something unexpected that the component recovered from."""

    def error(self, message: str, metadata: Metadata | None = None) -> None:
        """Record a failure."""

    def child(self, metadata: Metadata) -> Logger:
        """A logger that adds `metadata` to every record, on top of this one's."""


class _BoundLogger(ABC):
    """Level methods and `child()` over one `_emit`; metadata merges child-last."""

    def __init__(self, bound: Metadata | None = None) -> None:
        self._bound: dict[str, object] = dict(bound or {})

    def _merge(self, metadata: Metadata | None) -> dict[str, object]:
        return {**self._bound, **metadata} if metadata else self._bound

    @abstractmethod
    def _emit(self, level: LogLevel, message: str, metadata: dict[str, object]) -> None: ...

    @abstractmethod
    def child(self, metadata: Metadata) -> Logger:
        """A logger that adds `metadata` to every record."""

    def trace(self, message: str, metadata: Metadata | None = None) -> None:
        """Record fine-grained detail."""
        self._emit(LogLevel.TRACE, message, self._merge(metadata))

    def debug(self, message: str, metadata: Metadata | None = None) -> None:
        """Record diagnostic detail."""
        self._emit(LogLevel.DEBUG, message, self._merge(metadata))

    def info(self, message: str, metadata: Metadata | None = None) -> None:
        """Record a normal event worth knowing about."""
        self._emit(LogLevel.INFO, message, self._merge(metadata))

    def warn(self, message: str, metadata: Metadata | None = None) -> None:
        """Record something unexpected that the component recovered from."""
        self._emit(LogLevel.WARN, message, self._merge(metadata))

    def error(self, message: str, metadata: Metadata | None = None) -> None:
        """Record a failure."""
        self._emit(LogLevel.ERROR, message, self._merge(metadata))


class _StreamLogger(_BoundLogger):
    """Writes one line per record at or above `level` to `stream` (default: stderr)."""

    def __init__(
        self,
        level: LogLevel = LogLevel.INFO,
        *,
        stream: TextIO | None = None,
        metadata: Metadata | None = None,
    ) -> None:
        super().__init__(metadata)
        self.level = level
        self._stream = stream

    def child(self, metadata: Metadata) -> Self:
        """A logger that adds `metadata` to every record."""
        return type(self)(self.level, stream=self._stream, metadata=self._merge(metadata))

    @abstractmethod
    def _line(self, stamp: str, level: LogLevel, message: str, metadata: dict[str, object]) -> str:
        """The record as one line, without its newline."""

    def _emit(self, level: LogLevel, message: str, metadata: dict[str, object]) -> None:
        if level < self.level:
            return
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        # resolve stderr at write time, so capture tools that swap sys.stderr see it
        stream = self._stream or sys.stderr
        stream.write(self._line(stamp, level, message, metadata) + "\n")


class ConsoleLogger(_StreamLogger):
    """Writes one line per record: UTC time, level, message, then `key=value` pairs.

    Records below `level` are dropped. Values are written as JSON, so a line can be
    read back by a machine as well as a person.
    """

    def _line(self, stamp: str, level: LogLevel, message: str, metadata: dict[str, object]) -> str:
        pairs = "".join(
            f" {key}={json.dumps(value, default=str, ensure_ascii=False)}"
            for key, value in metadata.items()
        )
        return f"{stamp} {level.name:<5} {message}{pairs}"


class JsonLogger(_StreamLogger):
    """Writes one JSON object per line: `time`, `level`, `message`, then the metadata.

    For log collectors (Loki, Elasticsearch, CloudWatch). Records below `level` are
    dropped; a metadata key named like one of the first three is left out.
    """

    def _line(self, stamp: str, level: LogLevel, message: str, metadata: dict[str, object]) -> str:
        record: dict[str, object] = {"time": stamp, "level": level.name, "message": message}
        for key, value in metadata.items():
            record.setdefault(key, value)
        return json.dumps(record, default=str, ensure_ascii=False)


class StdlibLogger(_BoundLogger):
    """Forwards records to a `logging.Logger`; metadata goes into `extra["aiki"]`.

    `TRACE` maps to level 5, below `DEBUG`.
    """

    def __init__(self, logger: logging.Logger, *, metadata: Metadata | None = None) -> None:
        super().__init__(metadata)
        self.logger = logger

    def child(self, metadata: Metadata) -> StdlibLogger:
        """A logger that adds `metadata` to every record."""
        return StdlibLogger(self.logger, metadata=self._merge(metadata))

    def _emit(self, level: LogLevel, message: str, metadata: dict[str, object]) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, message, extra={"aiki": metadata}, stacklevel=3)
