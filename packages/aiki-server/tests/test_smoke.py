from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx


async def test_start_and_get(server: httpx.AsyncClient) -> None:
    r = await server.post("/runs", json={"workflow": "w", "version": "1", "input": {"a": 1}})
    assert r.status_code == 201, r.text
    run_id = r.json()["run"]["id"]
    r = await server.get(f"/runs/{run_id}")
    assert r.status_code == 200, r.text
    assert r.json()["input"] == {"a": 1}
