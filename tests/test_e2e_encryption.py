"""End to end with `aiki_crypto`: what the server stores is sealed, and keys rotate.

A real server process, real worker processes with `AIKI_KEYS` in their environment,
and the test's client with the same ring. Each test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest

from aiki_client import Client
from aiki_core import DecryptionError, RunStatus, WorkflowFailedError
from aiki_crypto import AesGcmCodec, KeyRing
from e2e_app import Greeting, Secret, confided, hello_v1, secrets_v1
from e2e_support import QUIET, Counters, database, open_stack, start_worker

if TYPE_CHECKING:
    from aiki_core import RunId
    from aiki_core.sdk import WorkflowRunHandle
    from aiki_server.testing import LoggedProcess, ServerProcess
    from live_processes import LiveProcesses

RESULT_TIMEOUT = timedelta(seconds=30)


def _ring_text(*keys: tuple[str, bytes]) -> str:
    """`AIKI_KEYS` text for these (id, key) pairs, newest first."""
    return ",".join(f"{kid}:{base64.urlsafe_b64encode(key).decode()}" for kid, key in keys)


def _codec(*keys: tuple[str, bytes]) -> AesGcmCodec:
    return AesGcmCodec(KeyRing(keys))


KEY_A = ("key-a", os.urandom(32))
KEY_B = ("key-b", os.urandom(32))


def _sqlite_text(path: Path) -> str:
    """The bytes of a SQLite database and its -wal and -shm files, as Latin-1 text."""
    parts = [p for p in path.parent.glob(f"{path.name}*") if p.is_file()]
    assert path in parts, f"no SQLite file at {path}"
    return "".join(p.read_bytes().decode("latin-1") for p in parts)


async def _stored_text(db_url: str) -> str:
    """Everything the database holds, as text: the SQLite files' bytes, or every PG row."""
    if db_url.startswith("sqlite:///"):
        return _sqlite_text(Path(db_url.removeprefix("sqlite:///")))
    base, _, schema = db_url.partition("?search_path=")
    conn = await asyncpg.connect(base)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
        )
        assert tables, f"no tables in schema {schema}"
        rows = [
            row[0]
            for table in tables
            for row in await conn.fetch(f'SELECT t::text FROM {schema}."{table[0]}" t')
        ]
    finally:
        await conn.close()
    return "\n".join(rows)


@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "clear"])
async def test_a_marker_in_every_payload_never_reaches_the_database(
    db_url: str, processes: LiveProcesses, tmp_path: Path, sealed: bool
) -> None:
    marker = f"MARKER-{uuid.uuid4().hex}"
    codec = _codec(KEY_A) if sealed else None
    env = {"AIKI_KEYS": _ring_text(KEY_A)} if sealed else None
    async with open_stack(db_url, processes, tmp_path, codec=codec, worker_env=env) as stack:
        handle = await secrets_v1.start(stack.client, Secret(key="m", marker=marker))
        await handle.wait_for_status([RunStatus.AWAITING_EVENT], timeout=RESULT_TIMEOUT)
        await handle.send_event(confided, f"a word about {marker}")
        result = await handle.result(timeout=RESULT_TIMEOUT)
        detail = await handle.detail()
        await stack.server.stop()

    # the run went through every kind of payload, and the client reads them all in clear
    assert result == (f"confided {marker}; the child hides {marker}; heard a word about {marker}")
    (confide,) = [t for t in detail.tasks if t.name == "confide"]
    assert [a.error is not None and marker in a.error.message for a in confide.attempts] == [
        True,
        False,
    ]
    (child,) = detail.children
    assert child.error is not None and marker in child.error.message
    assert [e.data for e in detail.events] == [f"a word about {marker}"]
    assert stack.counters.count("confide-m") == 2

    stored = await _stored_text(db_url)
    # the control run shows the scan would find it; the sealed run leaves no trace
    assert (marker in stored) is not sealed
    assert ("aiki:v1:key-a:" in stored) is sealed


async def _swap_worker(
    processes: LiveProcesses,
    server: ServerProcess,
    counters: Counters,
    old: LoggedProcess | None,
    *keys: tuple[str, bytes],
) -> LoggedProcess:
    """Stop `old` (if any) and start a worker whose ring is `keys`."""
    if old is not None:
        await old.stop()
    return await start_worker(
        processes, server.base_url, counters, env={"AIKI_KEYS": _ring_text(*keys)}
    )


async def _awaiting(client: Client, secret: Secret) -> WorkflowRunHandle[str]:
    handle = await secrets_v1.start(client, secret)
    await handle.wait_for_status([RunStatus.AWAITING_EVENT], timeout=RESULT_TIMEOUT)
    return handle


async def test_runs_sealed_with_a_key_finish_after_rotation_and_fail_naming_it_once_removed(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    server = await processes.start_server(db_url)
    counters = Counters(tmp_path / "counters")
    worker = await _swap_worker(processes, server, counters, None, KEY_A)
    async with Client(server.base_url, codec=_codec(KEY_A), logger=QUIET) as under_a:
        rotated = await _awaiting(under_a, Secret(key="r1", marker="one"))
        orphaned = await _awaiting(under_a, Secret(key="r2", marker="two"))

    # the ring becomes [B, A]: B seals from now on, A still opens what it sealed
    worker = await _swap_worker(processes, server, counters, worker, KEY_B, KEY_A)
    async with Client(server.base_url, codec=_codec(KEY_B, KEY_A), logger=QUIET) as both:
        handle = both.run_handle(rotated.id, secrets_v1.decode_result)
        await handle.send_event(confided, "after the rotation")
        assert await handle.result(timeout=RESULT_TIMEOUT) == (
            "confided one; the child hides one; heard after the rotation"
        )
    assert counters.count("confide-r1") == 2, "the task recorded under A was not replayed"

    # A is removed: the run whose input A sealed cannot go on, and says why
    worker = await _swap_worker(processes, server, counters, worker, KEY_B)
    async with Client(server.base_url, codec=_codec(KEY_B), logger=QUIET) as only_b:
        handle = only_b.run_handle(orphaned.id, secrets_v1.decode_result)
        await handle.send_event(confided, "too late")
        with pytest.raises(WorkflowFailedError) as failed:
            await handle.result(timeout=RESULT_TIMEOUT)
    assert failed.value.error.code == DecryptionError.code.value
    assert "'key-a'" in failed.value.error.message
    assert failed.value.error.details == {"key_id": "key-a"}
    assert worker.returncode is None


async def _set_result(db_url: str, run_id: RunId, sealed: str) -> None:
    async with database(db_url) as db, db.transaction() as tx:
        sql = "UPDATE runs SET result = $1 WHERE id = $2"
        await tx.execute(sql, json.dumps(sealed), run_id)


async def _result_of(db_url: str, run_id: RunId) -> str:
    async with database(db_url) as db, db.reader() as tx:
        row = await tx.fetchrow("SELECT result FROM runs WHERE id = $1", run_id)
    assert row is not None
    value = json.loads(row["result"])
    assert isinstance(value, str)
    return value


async def test_a_tampered_a_swapped_and_a_foreign_key_envelope_are_refused(
    db_url: str, processes: LiveProcesses, tmp_path: Path
) -> None:
    env = {"AIKI_KEYS": _ring_text(KEY_A)}
    async with open_stack(db_url, processes, tmp_path, codec=_codec(KEY_A), worker_env=env) as s:
        first = await hello_v1.start(s.client, Greeting(name="ann"))
        second = await hello_v1.start(s.client, Greeting(name="bob"))
        assert (await first.result(timeout=RESULT_TIMEOUT)).message == "hello ann!"
        assert (await second.result(timeout=RESULT_TIMEOUT)).message == "hello bob!"

        # a key under the same id that is not the one that sealed
        impostor = ("key-a", os.urandom(32))
        async with Client(s.server.base_url, codec=_codec(impostor), logger=QUIET) as wrong:
            with pytest.raises(DecryptionError, match="'key-a'"):
                await wrong.run_handle(first.id).result()

        # one byte of the ciphertext changed
        sealed = await _result_of(db_url, first.id)
        head, body = sealed.rsplit(":", 1)
        flipped = head + ":" + ("A" if body[0] != "A" else "B") + body[1:]
        await _set_result(db_url, first.id, flipped)
        with pytest.raises(DecryptionError, match="authentication failed"):
            await first.result()

        # the second run's (authentic) result copied into the first run
        moved = await _result_of(db_url, second.id)
        await _set_result(db_url, first.id, moved)
        with pytest.raises(DecryptionError, match="authentication failed"):
            await first.result()
        assert (await second.result()).message == "hello bob!"
