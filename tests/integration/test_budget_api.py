"""Budgets over HTTP: set, read and removed by operator keys (admins: their tenant's keys), every
change audited, enforced by the gateway within seconds of a change made elsewhere, and their
80 %/100 % thresholds published on NATS.

One API (no workers) on PostgreSQL serves the module, with the fake server's OpenAI side priced
as ``cheap``; each test works in tenants of its own.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import nats
import pytest
from nats.aio.msg import Msg

from spine.events.subjects import BUDGET_THRESHOLD
from spine.platform.db import Database
from spine.platform.metering.budgets import BudgetLedger, BudgetLimits
from support.databases import create_database
from support.fake_models import FakeModelServer
from support.live_platform import RunningPlatform, running_platform

pytestmark = pytest.mark.integration

CHEAP = "cheap"
PRESET = f"preset-{uuid.uuid4().hex[:6]}"  # a tenant whose daily budget is a setting
ZERO = Decimal(0)


@pytest.fixture(scope="module")
async def spine(
    services: Any, fake_models: FakeModelServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningPlatform]:
    models_file = tmp_path_factory.mktemp("budgets") / "models.yaml"
    models_file.write_text(
        "models:\n"
        f"  - name: {CHEAP}\n"
        "    provider: openai-compatible\n"
        "    model: gpt-4o-mini\n"
        f"    api_base: {fake_models.openai_url}\n"
        '    input_price: "0.001"\n'
        '    output_price: "0.002"\n'
        "    context_window: 8192\n"
    )
    database = create_database(services.database_url)
    async with running_platform(
        services,
        database,
        fake_models,
        workers=0,
        models_file=models_file,
        budgets={"tenants": f"{PRESET}=7"},
    ) as running:
        yield running


@pytest.fixture
async def operator(spine: RunningPlatform) -> AsyncIterator[httpx.AsyncClient]:
    async with client(spine, await spine.new_key(fresh("ops"), role="operator")) as ops:
        yield ops


def client(spine: RunningPlatform, secret: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=spine.url, timeout=30, headers={"Authorization": f"Bearer {secret}"}
    )


def fresh(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def key_id(secret: str) -> str:
    return secret.split("_", 2)[1]


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def new_tenant(ops: httpx.AsyncClient, name: str) -> str:
    tenant = fresh(name)
    assert (await ops.post("/v1/tenants", json={"name": tenant})).status_code == 201
    return tenant


async def audit_of(ops: httpx.AsyncClient, tenant: str) -> list[dict[str, Any]]:
    rows = ok(await ops.get("/v1/audit", params={"tenant": tenant, "limit": 500}))["data"]
    return [r for r in rows[::-1] if r["action"].startswith("budget.")]  # oldest first


async def test_an_operator_sets_reads_and_removes_budgets_and_each_change_is_audited(
    spine: RunningPlatform, operator: httpx.AsyncClient
) -> None:
    tenant = await new_tenant(operator, "acme")
    path = f"/v1/budgets/tenants/{tenant}"
    shown = ok(await operator.get(path))
    assert shown["scope"] == f"tenant:{tenant}" and shown["alerts"] == []
    for period in ("daily", "weekly", "monthly"):
        assert (shown[period]["limit"], shown[period]["source"]) == (None, None)

    monthly = ok(await operator.put(f"{path}/monthly", json={"limit": "25.50"}))["monthly"]
    today = datetime.now(UTC).date()
    assert (monthly["limit"], monthly["source"], monthly["remaining"]) == ("25.5", "stored", "25.5")
    assert monthly["period_start"] == today.replace(day=1).isoformat()
    assert ok(await operator.put(f"{path}/monthly", json={"limit": 30}))["monthly"]["limit"] == "30"
    assert ok(await operator.get(path))["daily"]["limit"] is None  # other periods untouched

    member = key_id(await spine.new_key(tenant))
    weekly = ok(await operator.put(f"/v1/budgets/keys/{member}/weekly", json={"limit": "2"}))
    assert (weekly["scope"], weekly["weekly"]["limit"]) == (f"key:{member}", "2")

    removed = ok(await operator.delete(f"{path}/monthly"))
    assert (removed["monthly"]["limit"], removed["monthly"]["source"]) == (None, None)
    again = await operator.delete(f"{path}/monthly")
    assert again.status_code == 404 and again.json()["error"]["field"] == "period"

    rows = await audit_of(operator, tenant)
    assert [(r["action"], r["target"], r["outcome"]) for r in rows] == [
        ("budget.set", f"tenant:{tenant}", "ok"),
        ("budget.set", f"tenant:{tenant}", "ok"),
        ("budget.set", f"key:{member}", "ok"),
        ("budget.remove", f"tenant:{tenant}", "ok"),
    ]
    assert [r["details"] for r in rows] == [
        {"period": "monthly", "limit": "25.5", "previous": None},
        {"period": "monthly", "limit": "30", "previous": "25.5"},
        {"period": "weekly", "limit": "2", "previous": None},
        {"period": "monthly", "previous": "30"},
    ]
    assert {r["key_id"] for r in rows} == {key_id(operator.headers["Authorization"][7:])}


async def test_settings_are_defaults_and_a_stored_limit_overrides_them(
    operator: httpx.AsyncClient,
) -> None:
    assert (await operator.post("/v1/tenants", json={"name": PRESET})).status_code == 201
    path = f"/v1/budgets/tenants/{PRESET}"
    daily = ok(await operator.get(path))["daily"]
    assert (daily["limit"], daily["source"]) == ("7", "settings")
    daily = ok(await operator.put(f"{path}/daily", json={"limit": "3"}))["daily"]
    assert (daily["limit"], daily["source"]) == ("3", "stored")
    daily = ok(await operator.delete(f"{path}/daily"))["daily"]
    assert (daily["limit"], daily["source"]) == ("7", "settings")


async def test_budgets_are_bound_to_their_tenant_and_role(
    spine: RunningPlatform, operator: httpx.AsyncClient
) -> None:
    acme, globex = await new_tenant(operator, "acme"), await new_tenant(operator, "globex")
    admin_secret, member_secret = (
        await spine.new_key(acme, role="admin"),
        await spine.new_key(acme),
    )
    theirs = key_id(await spine.new_key(globex))
    ops_in_acme = key_id(await spine.new_key(acme, role="operator"))
    limit = {"limit": "1"}

    async with client(spine, admin_secret) as admin:
        # Another tenant and its keys do not exist for a tenant's admin.
        assert (await admin.put(f"/v1/budgets/tenants/{globex}/daily", json=limit)).status_code == (
            404
        )
        assert (await admin.get(f"/v1/budgets/tenants/{globex}")).status_code == 404
        for response in (
            await admin.put(f"/v1/budgets/keys/{theirs}/daily", json=limit),
            await admin.delete(f"/v1/budgets/keys/{theirs}/daily"),
        ):
            assert response.status_code == 404 and response.json()["error"]["field"] == "key_id"
        # Its own tenant's keys it budgets; its tenant, and an operator's key, it may not.
        member = key_id(member_secret)
        assert ok(await admin.put(f"/v1/budgets/keys/{member}/daily", json=limit))["daily"][
            "limit"
        ] == ("1")
        assert ok(await admin.delete(f"/v1/budgets/keys/{member}/daily"))["daily"]["limit"] is None
        assert (await admin.put(f"/v1/budgets/tenants/{acme}/daily", json=limit)).status_code == 403
        ops_key = await admin.put(f"/v1/budgets/keys/{ops_in_acme}/daily", json=limit)
        assert ops_key.status_code == 403 and ops_key.json()["error"]["field"] == "key_id"

    async with client(spine, member_secret) as member_client:
        for response in (
            await member_client.put(f"/v1/budgets/keys/{member}/daily", json=limit),
            await member_client.put(f"/v1/budgets/tenants/{acme}/daily", json=limit),
            await member_client.delete(f"/v1/budgets/tenants/{acme}/daily"),
        ):
            assert response.status_code == 403, response.text
        assert ok(await member_client.get(f"/v1/budgets/keys/{member}"))["daily"]["limit"] is None

    rows = await audit_of(operator, acme)
    assert [(r["action"], r["outcome"], r["key_id"]) for r in rows] == [
        ("budget.set", "ok", key_id(admin_secret)),
        ("budget.remove", "ok", key_id(admin_secret)),
        ("budget.set", "denied", key_id(admin_secret)),
        ("budget.set", "denied", key_id(admin_secret)),
        ("budget.set", "denied", member),
        ("budget.set", "denied", member),
        ("budget.remove", "denied", member),
    ]
    assert await audit_of(operator, globex) == []
    assert ok(await operator.get(f"/v1/budgets/keys/{theirs}"))["daily"]["limit"] is None


@pytest.mark.parametrize(
    ("period", "body", "field"),
    [
        ("daily", {"limit": "-1"}, "limit"),
        ("daily", {"limit": "lots"}, "limit"),
        ("daily", {"limit": "1e12"}, "limit"),
        ("daily", {"limit": "0.123456789"}, "limit"),
        ("daily", {}, "limit"),
        ("daily", {"limit": "1", "currency": "EUR"}, "currency"),
        ("yearly", {"limit": "1"}, "period"),
    ],
)
async def test_bad_budget_input_is_a_422_naming_the_field(
    operator: httpx.AsyncClient, period: str, body: dict[str, Any], field: str
) -> None:
    response = await operator.put(f"/v1/budgets/tenants/{PRESET}/{period}", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


async def chat(member: httpx.AsyncClient, text: str) -> httpx.Response:
    return await member.post(
        "/v1/chat/completions",
        json={"model": CHEAP, "messages": [{"role": "user", "content": text}], "max_tokens": 5},
    )


async def test_a_limit_stored_elsewhere_refuses_calls_within_seconds(
    spine: RunningPlatform, operator: httpx.AsyncClient
) -> None:
    tenant = await new_tenant(operator, "acme")
    async with client(spine, await spine.new_key(tenant)) as member:
        for text in ("before any budget", "once more"):  # the API has read the stored limits
            assert (await chat(member, text)).status_code == 200

        # Another process (here: its own connection pool) stores a limit the call exceeds.
        elsewhere = Database(spine.settings.database_url or "")
        try:
            await BudgetLedger(elsewhere, BudgetLimits()).set_limit(
                f"tenant:{tenant}", "monthly", Decimal(0), by=None
            )
        finally:
            await elsewhere.dispose()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        attempt = 0
        while (refused := await chat(member, f"question {attempt}")).status_code == 200:
            assert loop.time() < deadline, "the stored limit never reached the API"
            attempt += 1
            await asyncio.sleep(0.1)
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["scope"], error["budget"]) == (
            "budget_exceeded",
            f"tenant:{tenant}",
            "0",
        )
        assert "monthly" in error["message"]

        # Removed in this API process, the limit is gone at once.
        ok(await operator.delete(f"/v1/budgets/tenants/{tenant}/monthly"))
        assert (await chat(member, "after the budget")).status_code == 200


async def test_thresholds_are_published_once_and_shown_with_the_budget(
    spine: RunningPlatform, operator: httpx.AsyncClient, services: Any
) -> None:
    tenant = await new_tenant(operator, "acme")
    heard: list[dict[str, Any]] = []
    arrived = asyncio.Event()

    async def hear(msg: Msg) -> None:
        alert = json.loads(msg.data)
        if alert["tenant"] == tenant:
            heard.append(alert)
            arrived.set()

    nc = await nats.connect(services.nats_url)
    try:
        await nc.subscribe(BUDGET_THRESHOLD, cb=hear)
        await nc.flush()
        async with client(spine, await spine.new_key(tenant)) as member:
            first = await chat(member, "call 99")  # as long as the calls below
            cost = Decimal(first.headers["x-spine-cost"])
            # A limit of twenty such calls, counted from the first: the sixteenth reaches 80 %,
            # and its reservation (the most it may cost, under 5 such calls) still fits.
            path = f"/v1/budgets/tenants/{tenant}/weekly"
            ok(await operator.put(path, json={"limit": str(cost * 20)}))
            for i in range(15):
                answer = await chat(member, f"call {i:02d}")
                assert answer.status_code == 200, (i, answer.text)
        await asyncio.wait_for(arrived.wait(), 10)
        budget = ok(await operator.get(f"/v1/budgets/tenants/{tenant}"))
    finally:
        await nc.close()
    assert [(a["type"], a["scope"], a["period"], a["threshold"]) for a in heard] == [
        ("budget.threshold", f"tenant:{tenant}", "weekly", 80)
    ]
    assert Decimal(heard[0]["spent"]) >= cost * 16
    assert [(a["period"], a["threshold"]) for a in budget["alerts"]] == [("weekly", 80)]
    assert Decimal(budget["weekly"]["spent"]) >= cost * 16


def money(amount: Decimal) -> str:
    return format(amount.normalize(), "f") if amount else "0"


def cost_of(answer: httpx.Response) -> Decimal:
    assert answer.status_code == 200, answer.text
    return Decimal(answer.headers["x-spine-cost"])


async def test_a_limit_set_after_spending_counts_what_the_period_spent(
    spine: RunningPlatform, operator: httpx.AsyncClient
) -> None:
    tenant = await new_tenant(operator, "fresh")
    path = f"/v1/budgets/tenants/{tenant}"
    async with client(spine, await spine.new_key(tenant)) as member:
        spent = sum([cost_of(await chat(member, f"paid question {n}")) for n in range(3)], ZERO)
        assert spent > 0
        # Periods without a limit show the usage ledger's spend.
        shown = ok(await operator.get(path))
        assert shown["weekly"]["spent"] == shown["monthly"]["spent"] == money(spent)
        assert shown["weekly"]["limit"] is None

        limit = (spent * 3 / 4).quantize(Decimal("0.00000001"))
        daily = ok(await operator.put(f"{path}/daily", json={"limit": str(limit)}))["daily"]
        assert (daily["spent"], daily["remaining"]) == (money(spent), "0")
        refused = await chat(member, "one more")
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["spent"] == money(spent)
        assert "daily" in refused.json()["error"]["message"]
        # Raising it counts on from there: nothing is seeded twice.
        raised = ok(await operator.put(f"{path}/daily", json={"limit": str(spent * 2)}))["daily"]
        assert raised["spent"] == money(spent)


async def test_concurrent_calls_never_take_a_key_past_its_limit(
    spine: RunningPlatform, operator: httpx.AsyncClient
) -> None:
    tenant = await new_tenant(operator, "burst")
    secret = await spine.new_key(tenant)
    member_id = key_id(secret)
    ok(await operator.put(f"/v1/budgets/keys/{member_id}/daily", json={"limit": "1.00"}))
    # 400 words: the fake server reports 400 prompt tokens, about twice what 4 characters of
    # JSON per token would guess.
    body = {"model": CHEAP, "messages": [{"role": "user", "content": "a " * 400}], "max_tokens": 1}
    async with client(spine, secret) as member:
        answers = await asyncio.gather(
            *(
                member.post(
                    "/v1/chat/completions", json=body, headers={"Cache-Control": "no-cache"}
                )
                for _ in range(10)
            )
        )
    admitted = [cost_of(a) for a in answers if a.status_code == 200]
    refused = [a.json()["error"] for a in answers if a.status_code == 429]
    assert admitted and len(admitted) + len(refused) == 10
    assert all(Decimal(error["requested"]) >= max(admitted) for error in refused), refused
    daily = ok(await operator.get(f"/v1/budgets/keys/{member_id}"))["daily"]
    assert Decimal(daily["spent"]) == sum(admitted, ZERO) <= Decimal("1.00")


async def test_a_rotated_key_keeps_its_budgets_and_what_it_spent(
    spine: RunningPlatform, operator: httpx.AsyncClient
) -> None:
    tenant = await new_tenant(operator, "rotating")
    secret = await spine.new_key(tenant)
    old = key_id(secret)
    ok(await operator.put(f"/v1/budgets/keys/{old}/daily", json={"limit": "10"}))
    async with client(spine, secret) as member:
        spent = cost_of(await chat(member, "before the rotation"))
    ok(await operator.put(f"/v1/budgets/keys/{old}/monthly", json={"limit": "0"}))

    rotated = await operator.post(f"/v1/keys/{old}/rotate")
    assert rotated.status_code == 201, rotated.text
    new_secret, new = rotated.json()["secret"], rotated.json()["id"]
    # The API reads the stored limits again within GENAI_BUDGETS__STORED_SECONDS (2 s).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while (shown := ok(await operator.get(f"/v1/budgets/keys/{new}")))["daily"]["limit"] is None:
        assert loop.time() < deadline, "the rotated key has no budget"
        await asyncio.sleep(0.2)
    assert (shown["daily"]["limit"], shown["daily"]["spent"]) == ("10", money(spent))
    assert (shown["monthly"]["limit"], shown["monthly"]["spent"]) == ("0", money(spent))

    async with client(spine, new_secret) as member:
        refused = await chat(member, "after the rotation")
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["scope"] == f"key:{new}"
    assert "monthly" in refused.json()["error"]["message"]
