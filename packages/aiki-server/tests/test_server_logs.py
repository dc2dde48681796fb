"""`aiki-server --log-format/--log-level/--access-log`: a real server process's log."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from prometheus_client.parser import text_string_to_metric_families

from aiki_server.testing import server_process
from server_api import claim_one, start, transition

if TYPE_CHECKING:
    from pathlib import Path


async def run_one(base_url: str) -> str:
    """Start, claim and complete one run of `w` 1; its id."""
    async with httpx.AsyncClient(base_url=f"{base_url}/api/v1") as c:
        run = await start(c)
        claimed = await claim_one(c)
        r = await transition(c, run["id"], claimed["run"]["revision"], {"kind": "complete"})
        assert r.status_code == 200, r.text
    run_id: str = run["id"]
    return run_id


def records(log: Path) -> list[dict[str, Any]]:
    """Every line of the log, each of which must be one JSON object."""
    return [json.loads(line) for line in log.read_text().splitlines()]


async def test_json_lines_with_run_ids_and_access_log(db_url: str, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    args = ("--log-format", "json", "--log-level", "debug", "--access-log")
    async with server_process(db_url, *args, log=log) as server:
        run_id = await run_one(server.base_url)
        async with httpx.AsyncClient() as c:
            r = await c.get(f"{server.base_url}/metrics")
        assert r.status_code == 200
    lines = records(log)
    assert all({"time", "level", "message"} <= line.keys() for line in lines)
    serving = [line for line in lines if line["component"] == "aiki-server"]
    assert serving[0]["level"] == "INFO"
    assert serving[0]["message"].startswith("aiki-server ")
    ended = [line for line in lines if line["message"] == "run ended"]
    assert ended == [
        {
            "time": ended[0]["time"],
            "level": "DEBUG",
            "message": "run ended",
            "component": "runs",
            "run_id": run_id,
            "workflow": "w",
            "version": "1",
            "namespace": "default",
            "status": "completed",
        }
    ]
    requests = [line for line in lines if line["component"] == "uvicorn.access"]
    started = next(line for line in requests if line["path"] == "/api/v1/runs")
    assert started.keys() == {
        "time",
        "level",
        "message",
        "component",
        "client",
        "method",
        "path",
        "status",
    }
    assert (started["level"], started["message"], started["method"], started["status"]) == (
        "INFO",
        "request",
        "POST",
        201,
    )
    assert {(r["method"], r["path"], r["status"]) for r in requests} >= {
        ("POST", "/api/v1/claims", 200),
        ("GET", "/metrics", 200),
    }
    # the process's own metrics
    samples = {
        (sample.name, sample.labels.get("status")): sample.value
        for family in text_string_to_metric_families(r.text)
        for sample in family.samples
    }
    assert samples[("aiki_runs_started_total", None)] == 1
    assert samples[("aiki_runs_ended_total", "completed")] == 1


async def test_from_the_environment_info_and_no_access_log(db_url: str, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    env = {"AIKI_LOG_FORMAT": "json", "AIKI_LOG_LEVEL": "info"}
    async with server_process(db_url, log=log, env=env) as server:
        await run_one(server.base_url)
    lines = records(log)
    assert [line["component"] for line in lines] == ["aiki-server"]


async def test_the_console_format_is_the_default(db_url: str, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    async with server_process(db_url, "--log-level", "debug", log=log) as server:
        run_id = await run_one(server.base_url)
    ended = [line for line in log.read_text().splitlines() if " run ended " in line]
    assert len(ended) == 1
    assert f'run_id="{run_id}" workflow="w" version="1" namespace="default"' in ended[0]


async def test_an_unknown_format_is_a_usage_error() -> None:
    done = await anyio.run_process(
        [sys.executable, "-m", "aiki_server", "--db", ":memory:"],
        check=False,
        env={**os.environ, "AIKI_LOG_FORMAT": "xml"},
    )
    assert done.returncode == 2
    assert b"AIKI_LOG_FORMAT must be console or json, got 'xml'" in done.stderr
