from __future__ import annotations

import io
import json
import logging
import re
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from aiki_core import ConsoleLogger, JsonLogger, Logger, LogLevel, StdlibLogger

if TYPE_CHECKING:
    from collections.abc import Mapping

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (?P<level>[A-Z]+) +(?P<rest>.*)$")
STDLIB_NAME = "aiki.tests.logging"


@pytest.fixture
def stream() -> io.StringIO:
    return io.StringIO()


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def _parsed(stream: io.StringIO) -> list[tuple[str, str]]:
    parsed = []
    for line in _lines(stream):
        match = LINE.match(line)
        assert match is not None, line
        parsed.append((match["level"], match["rest"]))
    return parsed


def test_console_writes_one_line_per_record(stream: io.StringIO) -> None:
    log = ConsoleLogger(LogLevel.TRACE, stream=stream)
    log.trace("replayed", {"task": "charge"})
    log.debug("polling")
    log.info("claimed run", {"run_id": "r-1", "count": 3, "ok": True, "gone": None})
    log.warn("slow heartbeat", {"ms": 1500.5})
    log.error("failed", {"tags": ["a", "b"], "meta": {"k": 1}})
    assert stream.getvalue().endswith("\n")
    assert _parsed(stream) == [
        ("TRACE", 'replayed task="charge"'),
        ("DEBUG", "polling"),
        ("INFO", 'claimed run run_id="r-1" count=3 ok=true gone=null'),
        ("WARN", "slow heartbeat ms=1500.5"),
        ("ERROR", 'failed tags=["a", "b"] meta={"k": 1}'),
    ]


def test_console_values_are_json(stream: io.StringIO) -> None:
    log = ConsoleLogger(stream=stream)
    log.info("odd values", {"name": "Zoë", "quote": 'say "hi"', "delay": timedelta(seconds=1)})
    (line,) = _lines(stream)
    assert line.endswith(' name="Zoë" quote="say \\"hi\\"" delay="0:00:01"')


def test_console_drops_records_below_its_level(stream: io.StringIO) -> None:
    log = ConsoleLogger(LogLevel.WARN, stream=stream)
    log.trace("t")
    log.debug("d")
    log.info("i")
    log.warn("w")
    log.error("e")
    assert [level for level, _ in _parsed(stream)] == ["WARN", "ERROR"]


def test_console_defaults_to_info_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    log = ConsoleLogger()
    log.debug("hidden")
    log.info("shown", {"k": 1})
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "hidden" not in captured.err
    assert re.search(r" INFO  shown k=1\n$", captured.err)


def test_console_child_binds_metadata(stream: io.StringIO) -> None:
    parent = ConsoleLogger(LogLevel.DEBUG, stream=stream, metadata={"worker": "w-1", "run": "a"})
    child = parent.child({"run": "b", "workflow": "orders"})
    child.debug("in child")
    child.info("call override", {"workflow": "ship"})
    parent.info("in parent")
    assert _parsed(stream) == [
        ("DEBUG", 'in child worker="w-1" run="b" workflow="orders"'),
        ("INFO", 'call override worker="w-1" run="b" workflow="ship"'),
        ("INFO", 'in parent worker="w-1" run="a"'),
    ]
    assert child.level is LogLevel.DEBUG


def test_console_call_metadata_does_not_stick(stream: io.StringIO) -> None:
    log = ConsoleLogger(stream=stream, metadata={"worker": "w-1"})
    log.info("first", {"run": "r-1"})
    log.info("second")
    assert _parsed(stream)[1] == ("INFO", 'second worker="w-1"')


@pytest.fixture
def stdlib_logger() -> logging.Logger:
    return logging.getLogger(STDLIB_NAME)


def _aiki(record: logging.LogRecord) -> Mapping[str, object]:
    metadata = record.__dict__["aiki"]
    assert isinstance(metadata, dict)
    return metadata


def test_json_writes_one_object_per_line(stream: io.StringIO) -> None:
    log = JsonLogger(LogLevel.DEBUG, stream=stream).child({"worker_id": "w-1"})
    log.trace("dropped")
    log.debug("claimed run", {"run_id": "r-1", "delay": timedelta(seconds=1)})
    log.error("odd keys", {"message": "not mine", "name": "Zoë"})
    first, second = (json.loads(line) for line in _lines(stream))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first.pop("time"))
    assert first == {
        "level": "DEBUG",
        "message": "claimed run",
        "worker_id": "w-1",
        "run_id": "r-1",
        "delay": "0:00:01",
    }
    assert list(second) == ["time", "level", "message", "worker_id", "name"]
    assert (second["message"], second["name"]) == ("odd keys", "Zoë")


def test_stdlib_forwards_with_levels_and_metadata(
    caplog: pytest.LogCaptureFixture, stdlib_logger: logging.Logger
) -> None:
    caplog.set_level(LogLevel.TRACE, logger=STDLIB_NAME)
    log = StdlibLogger(stdlib_logger, metadata={"worker": "w-1"})
    log.trace("t", {"n": 1})
    log.debug("d")
    log.info("i")
    log.warn("w")
    log.error("e", {"worker": "w-2"})
    records = [r for r in caplog.records if r.name == STDLIB_NAME]
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (5, "t"),
        (logging.DEBUG, "d"),
        (logging.INFO, "i"),
        (logging.WARNING, "w"),
        (logging.ERROR, "e"),
    ]
    assert _aiki(records[0]) == {"worker": "w-1", "n": 1}
    assert _aiki(records[1]) == {"worker": "w-1"}
    assert _aiki(records[4]) == {"worker": "w-2"}
    # the record points at the caller, not at the logger's internals
    assert {r.funcName for r in records} == {"test_stdlib_forwards_with_levels_and_metadata"}


def test_stdlib_honours_is_enabled_for(
    caplog: pytest.LogCaptureFixture, stdlib_logger: logging.Logger
) -> None:
    caplog.set_level(logging.INFO, logger=STDLIB_NAME)
    log = StdlibLogger(stdlib_logger)
    log.trace("t")
    log.debug("d")
    log.info("i")
    log.error("e")
    records = [r for r in caplog.records if r.name == STDLIB_NAME]
    assert [r.getMessage() for r in records] == ["i", "e"]


def test_stdlib_child_binds_metadata(
    caplog: pytest.LogCaptureFixture, stdlib_logger: logging.Logger
) -> None:
    caplog.set_level(logging.DEBUG, logger=STDLIB_NAME)
    parent = StdlibLogger(stdlib_logger, metadata={"worker": "w-1", "run": "a"})
    child = parent.child({"run": "b"})
    assert child.logger is stdlib_logger
    child.info("child")
    parent.info("parent")
    records = [r for r in caplog.records if r.name == STDLIB_NAME]
    assert [_aiki(r) for r in records] == [
        {"worker": "w-1", "run": "b"},
        {"worker": "w-1", "run": "a"},
    ]


def test_log_levels_line_up_with_logging() -> None:
    assert LogLevel.TRACE.value == 5
    assert (LogLevel.DEBUG, LogLevel.INFO, LogLevel.WARN, LogLevel.ERROR) == (
        logging.DEBUG,
        logging.INFO,
        logging.WARNING,
        logging.ERROR,
    )


class _ListLogger:
    def trace(self, message: str, metadata: Mapping[str, object] | None = None) -> None: ...
    def debug(self, message: str, metadata: Mapping[str, object] | None = None) -> None: ...
    def info(self, message: str, metadata: Mapping[str, object] | None = None) -> None: ...
    def warn(self, message: str, metadata: Mapping[str, object] | None = None) -> None: ...
    def error(self, message: str, metadata: Mapping[str, object] | None = None) -> None: ...
    def child(self, metadata: Mapping[str, object]) -> _ListLogger:
        return self


def test_loggers_satisfy_the_protocol(stdlib_logger: logging.Logger) -> None:
    assert isinstance(ConsoleLogger(), Logger)
    assert isinstance(ConsoleLogger().child({"a": 1}), Logger)
    assert isinstance(JsonLogger().child({"a": 1}), JsonLogger)
    assert isinstance(StdlibLogger(stdlib_logger), Logger)
    assert isinstance(_ListLogger(), Logger)
    assert not isinstance(logging.getLogger(STDLIB_NAME), Logger)  # has no trace/child
    assert not isinstance(object(), Logger)
