"""A genuine bug is a 500 that names no internals to the client, and is logged with its cause.

Before, the hot path and the API-key check answered such a 500 without a log line.
The bugs are forced for real: a table gone from under the hot path's task record, and
one gone from under the API-key check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from server_api import app_client, asgi, claim_one, failed_requests, new_key, start, task_record

if TYPE_CHECKING:
    import pytest
    from fastapi import FastAPI


async def write_sql(app: FastAPI, sql: str, *args: object) -> None:
    async with app.state.db.transaction() as tx:
        await tx.execute(sql, *args)


def assert_opaque_500(answer: httpx.Response) -> None:
    assert answer.status_code == 500, answer.text
    assert answer.json() == {
        "error": {
            "code": "server_error",
            "message": "the server failed to handle the request",
            "details": {},
        }
    }


async def test_a_bug_on_the_hot_path_is_a_logged_500(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with app_client(db_url) as (app, client):
        run_id = (await start(client))["id"]
        revision = (await claim_one(client))["run"]["revision"]
        await write_sql(app, "ALTER TABLE tasks RENAME TO tasks_gone")
        capsys.readouterr()

        answer = await client.post(f"/runs/{run_id}/tasks", json=task_record(revision))

    assert_opaque_500(answer)
    [logged] = failed_requests(capsys.readouterr().err)
    assert logged["status"] == 500
    assert (logged["method"], logged["path"]) == ("POST", f"/api/v1/runs/{run_id}/tasks")
    assert "tasks" in logged["error"]
    assert "_hot_path.py" in logged["traceback"]


async def test_a_bug_in_the_api_key_check_is_a_logged_500(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with app_client(db_url) as (app, _):
        key = await new_key(app, "billing")
        await write_sql(app, "ALTER TABLE api_keys RENAME TO api_keys_gone")
        capsys.readouterr()
        headers = {"authorization": f"Bearer {key.key}"}
        async with httpx.AsyncClient(transport=asgi(app), base_url="http://aiki") as client:
            answer = await client.get("/api/v1/runs", headers=headers)

    assert_opaque_500(answer)
    [logged] = failed_requests(capsys.readouterr().err)
    assert logged["status"] == 500
    assert (logged["method"], logged["path"]) == ("GET", "/api/v1/runs")
    assert "api_keys" in logged["error"]
    assert "_auth.py" in logged["traceback"]
