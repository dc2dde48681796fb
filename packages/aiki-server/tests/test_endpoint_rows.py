"""Endpoint rows as the dispatcher reads them: parsed serves, and the secrets it signs with."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiki_core.push import PushSecret
from aiki_server._endpoints import (
    StoredSecret,
    dump_secrets,
    dump_serves,
    list_endpoints,
    load_endpoint,
)

if TYPE_CHECKING:
    from aiki_server._storage._database import Tx
    from conftest import Harness


async def _insert(
    tx: Tx, endpoint_id: str, namespace: str, kind: str, serves: str, secrets: str
) -> None:
    await tx.execute(
        "INSERT INTO endpoints (id, namespace, url, kind, serves, max_in_flight, timeout_ms,"
        " secrets, created_at) VALUES ($1, $2, 'https://example.com/aiki', $3, $4, 10, 60000,"
        " $5, 1)",
        endpoint_id,
        namespace,
        kind,
        serves,
        secrets,
    )


async def test_rows_parse_and_sign_with_their_unexpired_secrets_newest_first(
    harness: Harness,
) -> None:
    db = harness.app.state.db
    new, old, gone = PushSecret.generate(), PushSecret.generate(), PushSecret.generate()
    secrets = dump_secrets(
        [StoredSecret(str(new), None), StoredSecret(str(old), 2_000), StoredSecret(str(gone), 500)]
    )

    async def seed(tx: Tx) -> None:
        await _insert(tx, "01A", "default", "workflows", dump_serves([("wf", "1", "p")]), secrets)
        await _insert(tx, "01B", "default", "tasks", dump_serves(["send-mail"]), secrets)
        await _insert(tx, "01C", "other", "tasks", dump_serves(["charge"]), secrets)

    await db.write(seed)
    async with db.reader() as tx:
        workflows = await load_endpoint(tx, "01A", "default")
        elsewhere = await load_endpoint(tx, "01A", "other")
        tasks = await list_endpoints(tx, "tasks", "default")
        every_task = await list_endpoints(tx, "tasks")

    assert workflows is not None
    assert workflows.workflows == (("wf", "1", "p"),)
    assert workflows.tasks == ()
    assert [s.key_id for s in workflows.active_secrets(1_000)] == [new.key_id, old.key_id]
    assert [s.key_id for s in workflows.active_secrets(2_000)] == [new.key_id]
    assert elsewhere is None
    assert [(e.id, e.tasks) for e in tasks] == [("01B", ("send-mail",))]
    assert [e.id for e in every_task] == ["01B", "01C"]
