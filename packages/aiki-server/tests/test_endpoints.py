"""Push endpoints: the API (create, list, get, delete, rotate a secret), bad input, and
their rows as the dispatcher reads them (parsed serves, the secrets it signs with).

Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest

from aiki_core.push import PushSecret
from aiki_core.wire import CreateEndpointResponse, RotateEndpointSecretResponse
from aiki_server._endpoints import (
    StoredSecret,
    dump_secrets,
    dump_serves,
    list_endpoints,
    load_endpoint,
)
from server_api import START_MS, error_of, iso

if TYPE_CHECKING:
    import httpx

    from aiki_server._storage._database import Tx
    from server_api import Harness

DAY_MS = 24 * 3_600_000
WORKFLOWS = {"url": "https://runs.example/aiki", "workflows": [{"workflow": "w", "version": "1"}]}
TASKS = {"url": "http://tasks.example:8080/push?team=a", "tasks": ["send-mail", "charge"]}


async def create(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/endpoints", json=body)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def rotate(client: httpx.AsyncClient, endpoint_id: str, **body: Any) -> dict[str, Any]:
    r = await client.post(f"/endpoints/{endpoint_id}/secrets", json=body)
    assert r.status_code == 201, r.text
    rotated: dict[str, Any] = r.json()
    return rotated


def to_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


async def test_create_answers_the_endpoint_and_its_secret_once(harness: Harness) -> None:
    client = harness.client
    created = await create(client, WORKFLOWS)
    endpoint, secret = created["endpoint"], created["secret"]

    assert PushSecret.parse(secret).key_id == endpoint["secrets"][0]["key_id"]
    assert endpoint == {
        "id": endpoint["id"],
        "namespace": "default",
        "url": "https://runs.example/aiki",
        "kind": "workflows",
        "workflows": [{"workflow": "w", "version": "1", "pool": "default"}],
        "tasks": [],
        "max_in_flight": 10,
        "timeout": 60_000,
        "secrets": [{"key_id": PushSecret.parse(secret).key_id, "expires_at": None}],
        "created_at": iso(START_MS),
        "status": "healthy",
        "failures": 0,
        "failing_since": None,
        "last_error": None,
        "retry_at": None,
    }
    # the secret is never shown again
    got = await client.get(f"/endpoints/{endpoint['id']}")
    listed = await client.get("/endpoints")
    assert got.json() == endpoint
    assert listed.json() == {"endpoints": [endpoint]}
    assert secret not in got.text + listed.text
    key = secret.removeprefix(f"aiki_push_{endpoint['secrets'][0]['key_id']}_")
    assert key not in got.text + listed.text


async def test_list_is_oldest_first_and_delete_removes_one(harness: Harness) -> None:
    client = harness.client
    runs = (await create(client, WORKFLOWS))["endpoint"]
    body = {**TASKS, "max_in_flight": 1000, "timeout": 900_000}
    tasks = (await create(client, body))["endpoint"]

    assert (tasks["kind"], tasks["tasks"], tasks["workflows"]) == (
        "tasks",
        ["send-mail", "charge"],
        [],
    )
    assert (tasks["max_in_flight"], tasks["timeout"]) == (1000, 900_000)
    assert [e["id"] for e in (await client.get("/endpoints")).json()["endpoints"]] == [
        runs["id"],
        tasks["id"],
    ]

    deleted = await client.delete(f"/endpoints/{runs['id']}")

    assert deleted.status_code == 200
    assert deleted.json() == runs
    error_of(await client.get(f"/endpoints/{runs['id']}"), 404, "not_found")
    error_of(await client.delete(f"/endpoints/{runs['id']}"), 404, "not_found")
    assert (await client.get("/endpoints")).json() == {"endpoints": [tasks]}


async def test_rotation_puts_the_new_secret_first_and_keeps_the_previous_one_for_a_while(
    harness: Harness,
) -> None:
    client = harness.client
    created = await create(client, WORKFLOWS)
    endpoint_id, first = created["endpoint"]["id"], PushSecret.parse(created["secret"])

    rotated = await rotate(client, endpoint_id)
    second = PushSecret.parse(rotated["secret"])

    assert rotated["endpoint"]["secrets"] == [
        {"key_id": second.key_id, "expires_at": None},
        {"key_id": first.key_id, "expires_at": iso(START_MS + DAY_MS)},
    ]
    assert rotated["secret"] not in (await client.get(f"/endpoints/{endpoint_id}")).text
    async with harness.app.state.db.reader() as tx:
        row = await load_endpoint(tx, endpoint_id)
    assert row is not None
    # pushes are signed with both until the previous one expires
    assert row.active_secrets(START_MS + DAY_MS - 1) == [second, first]
    assert row.active_secrets(START_MS + DAY_MS) == [second]

    # two secrets at most: a further rotation drops the one rotated out before
    harness.clock.advance(1_000)
    third = await rotate(client, endpoint_id, previous_expires_in=60_000)
    assert third["endpoint"]["secrets"] == [
        {"key_id": PushSecret.parse(third["secret"]).key_id, "expires_at": None},
        {"key_id": second.key_id, "expires_at": iso(START_MS + 61_000)},
    ]

    # 0 revokes the previous secret at once
    fourth = await rotate(client, endpoint_id, previous_expires_in=0)
    assert fourth["endpoint"]["secrets"] == [
        {"key_id": PushSecret.parse(fourth["secret"]).key_id, "expires_at": None}
    ]


async def test_a_rotation_without_a_body_keeps_the_previous_secret_a_day(harness: Harness) -> None:
    created = await create(harness.client, TASKS)
    endpoint_id = created["endpoint"]["id"]

    r = await harness.client.post(f"/endpoints/{endpoint_id}/secrets")

    assert r.status_code == 201, r.text
    assert to_ms(r.json()["endpoint"]["secrets"][1]["expires_at"]) == START_MS + DAY_MS


async def test_the_status_shows_the_failures_the_dispatcher_records(harness: Harness) -> None:
    endpoint_id = (await create(harness.client, WORKFLOWS))["endpoint"]["id"]

    async def failed(failures: int) -> dict[str, Any]:
        await harness.app.state.db.write(
            lambda tx: tx.execute(
                "UPDATE endpoints SET failures = $2, failing_since = $3, last_error = 'HTTP 503',"
                " retry_at = $4 WHERE id = $1",
                endpoint_id,
                failures,
                START_MS,
                START_MS + 30_000,
            )
        )
        r = await harness.client.get(f"/endpoints/{endpoint_id}")
        got: dict[str, Any] = r.json()
        return got

    failing = await failed(4)
    assert {k: failing[k] for k in ("status", "failures", "last_error")} == {
        "status": "failing",
        "failures": 4,
        "last_error": "HTTP 503",
    }
    assert failing["failing_since"] == iso(START_MS)
    assert failing["retry_at"] == iso(START_MS + 30_000)
    assert (await failed(5))["status"] == "open"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://files.example/x", "http:// or https://"),
        ("files.example/x", "http:// or https://"),
        ("https:///path", "must name a host"),
        ("https://./path", "must name a host"),
        ("https://-:8080/", "must name a host"),
        ("https://...?q", "must name a host"),
        ("https://user:pw@host.example/", "user name or password"),
        ("https://host.example/#frag", "fragment"),
        ("https://host.example:99999/", "not a valid URL"),
        ("https://host.example/a b", "spaces or control characters"),
        ("https://host.example/caf\u00e9", "printable ASCII"),
        ("https://[::g]/", "not a valid URL"),
        ("https://host.example:070000/", "port up to 65535"),
        ("https://ho%st.example/", "not a valid URL"),
        ("https://host.example/\n", "spaces or control characters"),
        ("https://host.example/" + "a" * 2000, "at most 2000 characters"),
        # the HTTP client cannot send there: each push failed in the server
        ("http://999.1.1.1/", "not a valid IP address"),
        # where cloud metadata services answer: a key holder's endpoint must not make
        # the server post to them
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://169.254.169.254./", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[::ffff:a9fe:a9fe]/", "link-local"),  # 169.254.169.254, IPv4-mapped
        ("http://2852039166/", "link-local"),  # 169.254.169.254, as a resolver reads it
        ("http://0xa9.0xfe.0xa9.0xfe/", "link-local"),
        ("http://[fd00:ec2::254]/", "metadata service"),
        ("http://Metadata.Google.Internal/", "metadata service"),
    ],
)
async def test_bad_urls_are_refused(server: httpx.AsyncClient, url: str, problem: str) -> None:
    r = await server.post("/endpoints", json={"url": url, "tasks": ["t"]})

    error_of(r, 422, "payload_validation")
    assert problem in r.json()["error"]["message"], r.text
    assert (await server.get("/endpoints")).json() == {"endpoints": []}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"url": "https://h.example"}, "give workflows or tasks, exactly one"),
        ({**WORKFLOWS, "tasks": ["t"]}, "give workflows or tasks, exactly one"),
        ({**TASKS, "kind": "tasks"}, "kind"),
        ({"url": "https://h.example", "tasks": []}, "at least 1 item"),
        ({"url": "https://h.example", "tasks": [f"t{i}" for i in range(101)]}, "at most 100"),
        ({"url": "https://h.example", "tasks": ["t", "t"]}, "must differ"),
        ({"url": "https://h.example", "tasks": ["bad name"]}, "tasks.0"),
        ({"url": "https://h.example", "workflows": [{"workflow": "w"}]}, "version"),
        ({**TASKS, "max_in_flight": 0}, "max_in_flight"),
        ({**TASKS, "max_in_flight": 1001}, "max_in_flight"),
        ({**TASKS, "timeout": 999}, "at least 1000 ms"),
        ({**TASKS, "timeout": 900_001}, "at most 900000 ms"),
        ({**TASKS, "secret": "mine"}, "secret"),
    ],
)
async def test_bad_bodies_are_refused(
    server: httpx.AsyncClient, body: dict[str, Any], problem: str
) -> None:
    r = await server.post("/endpoints", json=body)

    error_of(r, 422, "payload_validation")
    assert problem in r.json()["error"]["message"], r.text
    assert (await server.get("/endpoints")).json() == {"endpoints": []}


async def test_bad_rotations_are_refused_and_change_nothing(server: httpx.AsyncClient) -> None:
    endpoint = (await create(server, TASKS))["endpoint"]
    path = f"/endpoints/{endpoint['id']}/secrets"

    for body in ({"previous_expires_in": -1}, {"previous_expires_in": "1h"}, {"other": 1}):
        error_of(await server.post(path, json=body), 422, "payload_validation")
    error_of(
        await server.post(path, json={"previous_expires_in": 31 * DAY_MS}),
        422,
        "payload_validation",
    )
    error_of(await server.post("/endpoints/01UNKNOWN/secrets", json={}), 404, "not_found")
    error_of(await server.get("/endpoints/not-an-id!"), 404, "not_found")
    assert (await server.get(f"/endpoints/{endpoint['id']}")).json() == endpoint


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
    assert workflows.active_secrets(1_000) == [new, old]
    assert workflows.active_secrets(2_000) == [new]
    assert elsewhere is None
    assert [(e.id, e.tasks) for e in tasks] == [("01B", ("send-mail",))]
    assert [e.id for e in every_task] == ["01B", "01C"]


async def test_no_repr_shows_a_secret(harness: Harness) -> None:
    # the dispatcher logs endpoints, apps log answers: a repr must not carry the key
    created = await create(harness.client, WORKFLOWS)
    secret = created["secret"]
    async with harness.app.state.db.reader() as tx:
        row = await load_endpoint(tx, created["endpoint"]["id"])
    assert row is not None
    answer = CreateEndpointResponse.model_validate(created)
    rotated = RotateEndpointSecretResponse.model_validate(created)
    for shown in (row, row.secrets[0], answer, rotated):
        assert secret not in repr(shown)
        assert secret not in str(shown)
    assert answer.secret == secret
