"""The admin API over HTTP: tenants, keys and budgets, tenant-bound, each change in the audit log.

One API (no workers) on PostgreSQL serves the whole module; each test works in tenants of its
own, so the audit rows it reads are its own.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from spine.platform.learning.experiments import ExperimentInput
from spine.platform.schema import utcnow
from support.databases import create_database
from support.fake_models import FakeModelServer
from support.live_platform import RunningPlatform, running_platform

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def spine(services: Any, fake_models: FakeModelServer) -> AsyncIterator[RunningPlatform]:
    database = create_database(services.database_url)
    async with running_platform(services, database, fake_models, workers=0) as running:
        yield running


@pytest.fixture
async def operator(spine: RunningPlatform) -> AsyncIterator[httpx.AsyncClient]:
    secret = await spine.new_key(f"ops-{uuid.uuid4().hex[:6]}", role="operator")
    async with client(spine, secret) as ops:
        yield ops


def client(spine: RunningPlatform, secret: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=spine.url, timeout=30, headers={"Authorization": f"Bearer {secret}"}
    )


def fresh(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def key_id(secret: str) -> str:
    return secret.split("_", 2)[1]


def id_of(ops: httpx.AsyncClient) -> str:
    return key_id(ops.headers["Authorization"].removeprefix("Bearer "))


async def audit_of(ops: httpx.AsyncClient, **filters: str) -> list[dict[str, Any]]:
    response = await ops.get("/v1/audit", params={"limit": 500, **filters})
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["data"]
    return rows[::-1]  # oldest first


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


async def test_an_operator_administers_tenants_and_keys_and_each_change_is_audited(
    spine: RunningPlatform, operator: httpx.AsyncClient
) -> None:
    me = (await operator.get("/v1/tenants")).json()["data"]
    assert me and all("name" in t for t in me)
    tenant = fresh("globex")
    created = await operator.post("/v1/tenants", json={"name": tenant})
    assert created.status_code == 201, created.text
    assert error_of(await operator.post("/v1/tenants", json={"name": tenant}), 409)["field"] == (
        "name"
    )

    admin = await operator.post(
        "/v1/keys", json={"tenant": tenant, "role": "admin", "name": "ci", "expires_in": "30d"}
    )
    assert admin.status_code == 201, admin.text
    body = admin.json()
    assert (body["tenant"], body["role"], body["name"], body["state"]) == (
        tenant,
        "admin",
        "ci",
        "active",
    )
    assert body["expires_at"] is not None and body["secret"].startswith(f"spn_{body['id']}_")
    member = (await operator.post("/v1/keys", json={"tenant": tenant})).json()

    # The new member key works; rotated, its successor works and it does not.
    async with client(spine, member["secret"]) as old:
        assert (await old.get(f"/v1/keys/{member['id']}")).status_code == 200
        rotated = await operator.post(f"/v1/keys/{member['id']}/rotate")
        assert rotated.status_code == 201, rotated.text
        successor = rotated.json()
        assert (successor["tenant"], successor["role"], successor["rotated_from"]) == (
            tenant,
            "member",
            member["id"],
        )
        assert error_of(await old.get("/v1/tenants"), 401)["field"] == "Authorization"
    async with client(spine, successor["secret"]) as new:
        assert (await new.get("/v1/tenants")).json()["data"][0]["name"] == tenant
        revoked = await operator.post(f"/v1/keys/{successor['id']}/revoke")
        assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
        assert (await new.get("/v1/tenants")).status_code == 401  # the test API caches no key

    listed = (await operator.get("/v1/keys", params={"tenant": tenant})).json()["data"]
    assert {k["id"] for k in listed} == {body["id"], member["id"], successor["id"]}
    assert all("secret" not in k for k in listed)
    active = await operator.get("/v1/keys", params={"tenant": tenant, "include_revoked": False})
    assert [k["id"] for k in active.json()["data"]] == [body["id"]]

    rows = await audit_of(operator, tenant=tenant)
    assert [(r["action"], r["target"], r["outcome"]) for r in rows] == [
        ("tenant.create", tenant, "ok"),
        ("key.create", body["id"], "ok"),
        ("key.create", member["id"], "ok"),
        ("key.rotate", member["id"], "ok"),
        ("key.revoke", successor["id"], "ok"),
    ]
    assert {r["key_id"] for r in rows} == {id_of(operator)}
    assert all(r["via"] == "api" and r["address"] == "127.0.0.1" for r in rows)
    assert rows[1]["details"]["role"] == "admin" and rows[1]["details"]["expires_at"]
    assert rows[3]["details"]["new_key"] == successor["id"]
    assert "secret" not in str(rows) and body["secret"] not in str(rows)


async def test_keys_are_bound_to_their_tenant_and_role(
    spine: RunningPlatform, operator: httpx.AsyncClient
) -> None:
    acme, globex = fresh("acme"), fresh("globex")
    for name in (acme, globex):
        assert (await operator.post("/v1/tenants", json={"name": name})).status_code == 201
    admin_secret = await spine.new_key(acme, role="admin")
    member_secret = await spine.new_key(acme)
    other = (await operator.post("/v1/keys", json={"tenant": globex})).json()
    ops_in_acme = (
        await operator.post("/v1/keys", json={"tenant": acme, "role": "operator"})
    ).json()

    async with client(spine, admin_secret) as admin:
        # Another tenant, and its keys, do not exist for a tenant's admin.
        assert error_of(await admin.post("/v1/keys", json={"tenant": globex}), 404)["field"] == (
            "tenant"
        )
        for path in (f"/v1/keys/{other['id']}", f"/v1/budgets/keys/{other['id']}"):
            assert error_of(await admin.get(path), 404)["field"] == "key_id"
        for verb in ("revoke", "rotate"):
            missing = await admin.post(f"/v1/keys/{other['id']}/{verb}")
            assert error_of(missing, 404)["field"] == "key_id"
        assert error_of(await admin.get("/v1/keys", params={"tenant": globex}), 404)["field"] == (
            "tenant"
        )
        assert (await admin.get(f"/v1/tenants/{globex}")).status_code == 404
        assert (await admin.get(f"/v1/budgets/tenants/{globex}")).status_code == 404
        assert (await admin.get("/v1/audit", params={"tenant": globex})).status_code == 404
        # Its own tenant it administers, but not operators.
        made = await admin.post("/v1/keys", json={"role": "admin", "name": "deputy"})
        assert made.status_code == 201 and made.json()["tenant"] == acme
        escalate = await admin.post("/v1/keys", json={"role": "operator"})
        assert error_of(escalate, 403)["field"] == "role"
        assert (await admin.post(f"/v1/keys/{ops_in_acme['id']}/revoke")).status_code == 403
        assert (await admin.post("/v1/tenants", json={"name": fresh("mine")})).status_code == 403
        listed = (await admin.get("/v1/keys")).json()["data"]
        assert {k["tenant"] for k in listed} == {acme}
        own_rows = (await admin.get("/v1/audit")).json()["data"]
        assert own_rows and {r["tenant"] for r in own_rows} == {acme}

    async with client(spine, member_secret) as member:
        mine = key_id(member_secret)
        assert (await member.get(f"/v1/keys/{mine}")).json()["id"] == mine
        assert (await member.get(f"/v1/budgets/keys/{mine}")).status_code == 200
        budget = (await member.get(f"/v1/budgets/tenants/{acme}")).json()
        assert budget["scope"] == f"tenant:{acme}" and budget["daily"]["spent"] == "0"
        for response in (
            await member.post("/v1/keys", json={}),
            await member.get("/v1/keys"),
            await member.get(f"/v1/keys/{key_id(admin_secret)}"),
            await member.post(f"/v1/keys/{key_id(admin_secret)}/revoke"),
            await member.get("/v1/audit"),
        ):
            assert error_of(response, 403)["type"] == "forbidden"
        assert (await member.get(f"/v1/keys/{other['id']}")).status_code == 403
        assert (await member.post("/v1/keys", json={"tenant": globex})).status_code == 404
        assert [t["name"] for t in (await member.get("/v1/tenants")).json()["data"]] == [acme]

    denied = [r for r in await audit_of(operator, tenant=acme) if r["outcome"] == "denied"]
    assert {(r["action"], r["key_id"]) for r in denied} == {
        ("key.create", key_id(admin_secret)),
        ("key.revoke", key_id(admin_secret)),
        ("tenant.create", key_id(admin_secret)),
        ("key.create", key_id(member_secret)),
        ("key.revoke", key_id(member_secret)),
    }
    assert not [r for r in await audit_of(operator, tenant=globex) if r["outcome"] == "denied"]


async def test_an_expired_key_is_refused(spine: RunningPlatform) -> None:
    tenant = fresh("acme")
    expired = await spine.platform.keys.create(
        tenant=tenant, role="admin", expires_at=utcnow() - timedelta(seconds=1)
    )
    async with client(spine, expired.secret) as late:
        refused = error_of(await late.get("/v1/tenants"), 401)
        assert "expired" in refused["message"] and refused["field"] == "Authorization"
    async with client(spine, await spine.new_key(tenant, role="admin")) as admin:
        shown = (await admin.get(f"/v1/keys/{expired.key.id}")).json()
        assert shown["state"] == "expired"
        again = await admin.post(f"/v1/keys/{expired.key.id}/rotate")
        assert error_of(again, 409)["field"] == "expires_in"
        renewed = await admin.post(f"/v1/keys/{expired.key.id}/rotate", json={"expires_in": "1h"})
        assert renewed.status_code == 201 and renewed.json()["state"] == "active"


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/v1/keys", {"role": "root"}, 422, "role"),
        ("/v1/keys", {"expires_in": "soon"}, 400, "expires_in"),
        ("/v1/keys", {"expires_in": "0s"}, 400, "expires_in"),
        ("/v1/keys", {"expires_in": "1d", "expires_at": "2099-01-01T00:00:00Z"}, 400, "expires_at"),
        ("/v1/keys", {"expires_at": "2001-01-01T00:00:00Z"}, 400, "expires_at"),
        ("/v1/keys", {"expires_at": "2001-01-01T00:00:00"}, 422, "expires_at"),
        ("/v1/keys", {"name": "x" * 201}, 422, "name"),
        ("/v1/keys", {"tenant": ""}, 422, "tenant"),
        ("/v1/keys", {"secret": "mine"}, 422, "secret"),
        ("/v1/keys", {"tenant": "nobody-yet"}, 404, "tenant"),
        ("/v1/tenants", {"name": "has space"}, 422, "name"),
        ("/v1/tenants", {"name": "x" * 129}, 422, "name"),
        ("/v1/tenants", {}, 422, "name"),
    ],
)
async def test_bad_input_is_a_4xx_naming_the_field(
    operator: httpx.AsyncClient, path: str, body: dict[str, Any], status: int, field: str
) -> None:
    assert error_of(await operator.post(path, json=body), status)["field"] == field


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"since": "yesterday"}, 422, "since"),
        ({"limit": 0}, 422, "limit"),
        ({"limit": 501}, 422, "limit"),
        ({"cursor": "garbage"}, 400, "cursor"),
    ],
)
async def test_bad_audit_queries_name_the_parameter(
    operator: httpx.AsyncClient, params: dict[str, Any], status: int, field: str
) -> None:
    assert error_of(await operator.get("/v1/audit", params=params), status)["field"] == field


async def test_the_audit_log_reads_in_cursor_pages_with_filters(
    spine: RunningPlatform, operator: httpx.AsyncClient
) -> None:
    tenant = fresh("paged")
    await operator.post("/v1/tenants", json={"name": tenant})
    made = [
        (await operator.post("/v1/keys", json={"tenant": tenant})).json()["id"] for _ in range(6)
    ]
    seen: list[dict[str, Any]] = []
    params: dict[str, Any] = {"tenant": tenant, "action": "key.create", "limit": 4}
    while True:
        page = (await operator.get("/v1/audit", params=params)).json()
        assert len(page["data"]) <= 4
        seen += page["data"]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert [r["target"] for r in seen] == made[::-1]
    first = seen[-1]["at"]
    later = await operator.get(
        "/v1/audit", params={"tenant": tenant, "action": "key.create", "since": first}
    )
    assert len(later.json()["data"]) == 6
    none = await operator.get(
        "/v1/audit", params={"tenant": tenant, "action": "key.create", "until": first}
    )
    assert none.json()["data"] == []
    by_key = await operator.get("/v1/audit", params={"key": id_of(operator), "tenant": tenant})
    assert len(by_key.json()["data"]) == 7  # the tenant and its six keys
    by_other = await operator.get("/v1/audit", params={"key": "someoneelse", "tenant": tenant})
    assert by_other.json()["data"] == []


async def test_forwarded_for_is_ignored_without_a_trusted_proxy(
    spine: RunningPlatform, operator: httpx.AsyncClient
) -> None:
    tenant = fresh("fwd")
    response = await operator.post(
        "/v1/tenants", json={"name": tenant}, headers={"X-Forwarded-For": "203.0.113.9"}
    )
    assert response.status_code == 201
    [row] = await audit_of(operator, tenant=tenant)
    assert row["address"] == "127.0.0.1"


async def test_no_route_changes_the_audit_log_and_the_database_refuses_to(
    spine: RunningPlatform, operator: httpx.AsyncClient
) -> None:
    assert (await operator.delete("/v1/audit")).status_code == 405
    assert (await operator.post("/v1/audit", json={})).status_code == 405
    async with spine.platform.db.engine.connect() as conn:
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            await conn.execute(sa.text("DELETE FROM audit_log"))


async def test_graph_queries_experiment_changes_and_approvals_are_audited(
    spine: RunningPlatform, operator: httpx.AsyncClient
) -> None:
    tenant = fresh("graphy")
    admin_secret = await spine.new_key(tenant, role="admin")
    member_secret = await spine.new_key(tenant)
    query = "MATCH (n:Person {tenant: $tenant}) RETURN count(n) AS c"
    arms = [
        {"name": "a", "share": 0.5, "strategy": "speed"},
        {"name": "b", "share": 0.5, "strategy": "quality"},
    ]
    async with client(spine, admin_secret) as admin:
        answered = await admin.post("/v1/graph/query", json={"query": query})
        assert answered.status_code == 200, answered.text
        # Created in the store: over HTTP, creating one waits for the router to warm up (~20 s
        # here); a member's refused creation below is audited all the same.
        made = await spine.platform.experiments.create(
            ExperimentInput.model_validate(
                {"name": "ab", "scope": {"kind": "gateway"}, "arms": arms}
            ),
            tenant=tenant,
            key_id=key_id(admin_secret),
        )
        experiment = made.id
        assert (await admin.post(f"/v1/experiments/{experiment}/stop")).status_code == 200
        approved, rejected = [await paused_task(spine, admin) for _ in range(2)]
        assert (await admin.post(f"/v1/tasks/{approved}/approve", json={})).status_code == 202
        reject = await admin.post(f"/v1/tasks/{rejected}/reject", json={"reason": "too costly"})
        assert reject.status_code == 202
        # A query the guard refuses (it reads past its tenant) is a probe: audited as denied.
        leak = "MATCH (a {tenant: $tenant}) RETURN [(x)<-->(y) | properties(y)] AS leak"
        assert (await admin.post("/v1/graph/query", json={"query": leak})).status_code == 400
    async with client(spine, member_secret) as member:
        assert (await member.post("/v1/graph/query", json={"query": query})).status_code == 403
        promote = await member.post(f"/v1/experiments/{experiment}/promote", json={"arm": "a"})
        assert promote.status_code == 403
        body = {"name": "ab", "scope": {"kind": "gateway"}, "arms": arms}
        assert (await member.post("/v1/experiments", json=body)).status_code == 403
    rows = await audit_of(operator, tenant=tenant)
    assert [(r["action"], r["target"], r["outcome"], r["key_id"]) for r in rows] == [
        ("graph.query", "cypher", "ok", key_id(admin_secret)),
        ("experiment.stop", experiment, "ok", key_id(admin_secret)),
        ("task.approve", approved, "ok", key_id(admin_secret)),
        ("task.reject", rejected, "ok", key_id(admin_secret)),
        ("graph.query", "cypher", "denied", key_id(admin_secret)),
        ("graph.query", "cypher", "denied", key_id(member_secret)),
        ("experiment.promote", experiment, "denied", key_id(member_secret)),
        ("experiment.create", "", "denied", key_id(member_secret)),
    ]
    assert rows[0]["details"]["query"] == query
    assert rows[3]["details"]["reason"] == "too costly"
    assert rows[4]["details"]["query"] == leak and "tenant" in rows[4]["details"]["reason"]
    assert rows[-2]["details"]["arm"] == "a" and rows[-1]["details"]["name"] == "ab"


async def paused_task(spine: RunningPlatform, admin: httpx.AsyncClient) -> str:
    """Submit a task and pause it for approval as a worker would (this API runs no worker)."""
    submitted = await admin.post("/v1/tasks", json={"agent": "chat", "input": {"prompt": "hi"}})
    task_id: str = submitted.json()["id"]
    async with spine.platform.db.transaction() as conn:
        await conn.execute(
            sa.text("UPDATE tasks SET state = 'running', attempts = 1 WHERE id = :id"),
            {"id": task_id},
        )
    paused = await spine.platform.tasks.pause(
        task_id,
        attempt=1,
        until=utcnow() + timedelta(minutes=5),
        proposal={"key": "step-1", "tool": "launch", "arguments": "{}"},
    )
    assert paused, "the task did not pause"
    return task_id


async def test_the_last_usable_operator_key_is_not_revoked_over_http(
    spine: RunningPlatform, operator: httpx.AsyncClient
) -> None:
    mine = id_of(operator)
    keys = spine.platform.keys
    for key in await keys.list_keys():
        if key.role == "operator" and key.id != mine and key.usable(utcnow()):
            await keys.revoke(key.id, keep_an_operator=False)
    refused = await operator.post(f"/v1/keys/{mine}/revoke")
    error = error_of(refused, 409)
    assert (error["type"], error["field"]) == ("conflict", "key_id")
    assert "last usable operator key" in error["message"]
    assert (await operator.get(f"/v1/keys/{mine}")).json()["state"] == "active"
    # With another operator key issued, this one may go.
    tenant = fresh("ops")
    assert (await operator.post("/v1/tenants", json={"name": tenant})).status_code == 201
    other = (await operator.post("/v1/keys", json={"tenant": tenant, "role": "operator"})).json()
    assert (await operator.post(f"/v1/keys/{mine}/revoke")).json()["state"] == "revoked"
    async with client(spine, other["secret"]) as successor:
        assert (await successor.get(f"/v1/keys/{mine}")).json()["state"] == "revoked"
