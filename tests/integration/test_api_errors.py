"""Bad input and failing backing services: every error is one JSON shape, never a stack trace.

The shape is ``{"error": {"type": ..., "message": ..., "field": ...}}``. The outage tests put a
real TCP proxy between the API and PostgreSQL or NATS and shut it, so the API's connections fail
the way they do when the server goes away.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from support.fake_models import FakeModelServer, Rule
from support.live_platform import RunningPlatform, running_platform
from support.tcp_proxy import TcpProxy, proxy_to

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
CHAT = {"agent": "chat", "input": {"prompt": "hello"}}


# -- helpers ----------------------------------------------------------------------------------


def assert_error(
    response: httpx.Response, status: int, error_type: str, field: str | None = None
) -> dict[str, Any]:
    """Check the one error shape and return the error object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert error["type"] == error_type, error
    assert isinstance(error["message"], str) and error["message"], error
    if field is not None:
        assert error.get("field") == field, error
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    return dict(error)


async def eventually(predicate: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


# -- one platform (API only, no worker) for the plain bad-input cases -------------------------


@pytest.fixture(scope="module")
async def spine(
    services: Any, module_pg_url: str, fake_models: FakeModelServer
) -> AsyncIterator[RunningPlatform]:
    # No worker: nothing here needs one, and a worker would outlive into later tests' streams.
    async with running_platform(services, module_pg_url, fake_models, workers=0) as running:
        yield running


@pytest.fixture
async def anonymous(spine: RunningPlatform) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=spine.url, timeout=30) as client:
        yield client


async def submit(spine: RunningPlatform, **body: Any) -> dict[str, Any]:
    response = await spine.client.post("/v1/tasks", json={**CHAT, **body})
    assert response.status_code == 202, response.text
    return dict(response.json())


# -- the request body -------------------------------------------------------------------------


async def test_malformed_json_body_is_422_naming_the_problem(spine: RunningPlatform) -> None:
    response = await spine.client.post(
        "/v1/tasks",
        content=b'{"agent": "chat", "input": ',
        headers={"content-type": "application/json"},
    )
    error = assert_error(response, 422, "validation_error", field="body")
    assert "JSON" in error["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"input": {"prompt": "x"}}, "agent"),
        ({"agent": "chat"}, "input"),
        ({"agent": "chat", "input": ["not", "an", "object"]}, "input"),
        ({"agent": "chat", "input": ""}, "input"),
        ({"agent": "no spaces allowed", "input": {}}, "agent"),
        ({**CHAT, "priority": "urgent"}, "priority"),
        ({**CHAT, "surprise": 1}, "surprise"),
    ],
)
async def test_missing_or_invalid_field_is_422_naming_it(
    spine: RunningPlatform, body: dict[str, Any], field: str
) -> None:
    response = await spine.client.post("/v1/tasks", json=body)
    error = assert_error(response, 422, "validation_error", field=field)
    assert field in error["message"]


async def test_unknown_agent_is_400_naming_the_known_ones(spine: RunningPlatform) -> None:
    response = await spine.client.post("/v1/tasks", json={"agent": "wizard", "input": {}})
    error = assert_error(response, 400, "unknown_agent", field="agent")
    assert "wizard" in error["message"]
    assert "chat" in error["message"]


@pytest.mark.parametrize(
    ("task_input", "field"),
    [
        ({"prompt": ""}, "input.prompt"),
        ({"prompt": 5}, "input.prompt"),
        ({"prompt": "hi", "temperature": 9}, "input.temperature"),
        ({}, "input"),
    ],
)
async def test_input_failing_the_agents_schema_is_400_naming_the_field(
    spine: RunningPlatform, task_input: dict[str, Any], field: str
) -> None:
    response = await spine.client.post("/v1/tasks", json={"agent": "chat", "input": task_input})
    error = assert_error(response, 400, "invalid_request", field=field)
    assert error["message"].startswith(field)


async def test_body_over_one_mib_with_content_length_is_413(spine: RunningPlatform) -> None:
    body = json.dumps({"agent": "chat", "input": {"prompt": "x" * (MiB + 10)}}).encode()
    response = await spine.client.post(
        "/v1/tasks", content=body, headers={"content-type": "application/json"}
    )
    assert "content-length" in {k.lower() for k in response.request.headers}
    error = assert_error(response, 413, "request_too_large")
    assert str(MiB) in error["message"]


async def test_chunked_body_over_one_mib_without_content_length_is_413(
    spine: RunningPlatform,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"agent": "chat", "input": {"prompt": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}}'

    response = await spine.client.post(
        "/v1/tasks", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, "request_too_large")


async def test_a_body_just_under_the_limit_is_accepted(spine: RunningPlatform) -> None:
    prompt = "y" * (MiB - 100)
    response = await spine.client.post(
        "/v1/tasks", json={"agent": "chat", "input": {"prompt": prompt}}
    )
    assert response.status_code == 202, response.text[:300]


async def test_deadline_in_the_past_is_400_naming_deadline(spine: RunningPlatform) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    response = await spine.client.post("/v1/tasks", json={**CHAT, "deadline": past})
    assert_error(response, 400, "invalid_request", field="deadline")


async def test_deadline_without_a_timezone_is_422(spine: RunningPlatform) -> None:
    response = await spine.client.post("/v1/tasks", json={**CHAT, "deadline": "2999-01-01T00:00"})
    assert_error(response, 422, "validation_error", field="deadline")


# -- authentication ---------------------------------------------------------------------------


async def test_missing_authorization_is_401_with_www_authenticate(
    spine: RunningPlatform, anonymous: httpx.AsyncClient
) -> None:
    for response in (
        await anonymous.post("/v1/tasks", json=CHAT),
        await anonymous.get("/v1/tasks"),
        await anonymous.get("/v1/agents"),
    ):
        error = assert_error(response, 401, "unauthorized", field="Authorization")
        assert response.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in error["message"]
    # A non-bearer scheme is the same as no key.
    basic = await anonymous.get("/v1/tasks", headers={"Authorization": "Basic dTpw"})
    assert_error(basic, 401, "unauthorized", field="Authorization")


@pytest.mark.parametrize(
    "key",
    [
        "not-a-key",
        "spn_only-two-parts",
        "xyz_abcdef012345_secret",
    ],
)
async def test_malformed_key_is_401(
    spine: RunningPlatform, anonymous: httpx.AsyncClient, key: str
) -> None:
    response = await anonymous.get("/v1/tasks", headers={"Authorization": f"Bearer {key}"})
    error = assert_error(response, 401, "unauthorized", field="Authorization")
    assert "malformed" in error["message"]
    assert response.headers["www-authenticate"] == "Bearer"


async def test_wrong_or_unknown_key_is_401(
    spine: RunningPlatform, anonymous: httpx.AsyncClient
) -> None:
    _, key_id, secret = spine.key.split("_", 2)
    wrong_secret = f"spn_{key_id}_{'A' * len(secret)}"
    unknown_id = f"spn_000000000000_{secret}"
    for key in (wrong_secret, unknown_id):
        response = await anonymous.get("/v1/tasks", headers={"Authorization": f"Bearer {key}"})
        assert_error(response, 401, "unauthorized", field="Authorization")
        assert response.headers["www-authenticate"] == "Bearer"


async def test_revoked_key_is_401(spine: RunningPlatform, anonymous: httpx.AsyncClient) -> None:
    issued = await spine.platform.keys.create(tenant="acme")
    headers = {"Authorization": f"Bearer {issued.secret}"}
    assert (await anonymous.get("/v1/tasks", headers=headers)).status_code == 200
    await spine.platform.keys.revoke(issued.key.id)
    response = await anonymous.get("/v1/tasks", headers=headers)
    assert_error(response, 401, "unauthorized", field="Authorization")


# -- tasks that are not there or not yours ----------------------------------------------------


async def test_unknown_task_is_404(spine: RunningPlatform) -> None:
    for response in (
        await spine.client.get("/v1/tasks/no-such-task"),
        await spine.client.post("/v1/tasks/no-such-task/cancel"),
        await spine.client.get("/v1/tasks/no-such-task/events"),
    ):
        error = assert_error(response, 404, "not_found", field="task_id")
        assert "no-such-task" in error["message"]


async def test_another_tenants_task_is_404_on_get_cancel_and_events(
    spine: RunningPlatform,
) -> None:
    task = await submit(spine)
    other = await spine.new_key("globex")
    async with httpx.AsyncClient(
        base_url=spine.url, headers={"Authorization": f"Bearer {other}"}
    ) as client:
        for response in (
            await client.get(f"/v1/tasks/{task['id']}"),
            await client.post(f"/v1/tasks/{task['id']}/cancel"),
            await client.get(f"/v1/tasks/{task['id']}/events"),
        ):
            assert_error(response, 404, "not_found", field="task_id")
        listing = await client.get("/v1/tasks")
        assert listing.json()["data"] == []
    # The other tenant's cancel changed nothing.
    assert (await spine.client.get(f"/v1/tasks/{task['id']}")).json()["cancel_requested"] is False


async def test_cancel_of_a_finished_task_is_409(spine: RunningPlatform) -> None:
    cancelled = await submit(spine)
    first = await spine.client.post(f"/v1/tasks/{cancelled['id']}/cancel")
    assert first.status_code == 202
    assert first.json()["state"] == "cancelled"
    again = await spine.client.post(f"/v1/tasks/{cancelled['id']}/cancel")
    error = assert_error(again, 409, "conflict")
    assert error["state"] == "cancelled"

    succeeded = await submit(spine)
    store = spine.platform.tasks
    claim = await store.claim(succeeded["id"], lease=30)
    assert claim.outcome == "claimed"
    await store.finish(succeeded["id"], attempt=claim.attempt, state="succeeded", result={"t": 1})
    response = await spine.client.post(f"/v1/tasks/{succeeded['id']}/cancel")
    error = assert_error(response, 409, "conflict")
    assert "succeeded" in error["message"]


# -- listing and events parameters ------------------------------------------------------------


@pytest.mark.parametrize(
    "cursor",
    [
        "not base64!",
        "abc",
        base64.urlsafe_b64encode(b"no separator").decode(),
        base64.urlsafe_b64encode(b"yesterday|some-id").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe|x").decode(),
        # Well-formed, but a timestamp without a timezone.
        base64.urlsafe_b64encode(b"2024-01-01T00:00:00|some-id").decode(),
    ],
)
async def test_bad_cursor_is_400(spine: RunningPlatform, cursor: str) -> None:
    response = await spine.client.get("/v1/tasks", params={"cursor": cursor})
    assert_error(response, 400, "invalid_request", field="cursor")


async def test_invalid_state_filter_is_422(spine: RunningPlatform) -> None:
    response = await spine.client.get("/v1/tasks", params={"state": "sleeping"})
    error = assert_error(response, 422, "validation_error", field="state")
    assert "queued" in json.dumps(error)


@pytest.mark.parametrize("limit", ["0", "201", "many"])
async def test_invalid_limit_is_422(spine: RunningPlatform, limit: str) -> None:
    response = await spine.client.get("/v1/tasks", params={"limit": limit})
    assert_error(response, 422, "validation_error", field="limit")


@pytest.mark.parametrize("last_event_id", ["abc", "-1", "1.5"])
async def test_bad_last_event_id_is_400(spine: RunningPlatform, last_event_id: str) -> None:
    task = await submit(spine)
    response = await spine.client.get(
        f"/v1/tasks/{task['id']}/events", headers={"Last-Event-ID": last_event_id}
    )
    assert_error(response, 400, "invalid_request", field="Last-Event-ID")


async def test_negative_after_is_422(spine: RunningPlatform) -> None:
    task = await submit(spine)
    response = await spine.client.get(f"/v1/tasks/{task['id']}/events", params={"after": -1})
    assert_error(response, 422, "validation_error", field="after")


async def test_unknown_route_and_method_use_the_same_shape(spine: RunningPlatform) -> None:
    assert_error(await spine.client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(await spine.client.delete("/v1/tasks"), 405, "method_not_allowed")


# -- backing services down --------------------------------------------------------------------
@contextlib.asynccontextmanager
async def database_behind_proxy(pg_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A TCP proxy in front of the test PostgreSQL, and the database URL through it."""
    real = make_url(pg_url)
    async with proxy_to(real.host or "127.0.0.1", real.port or 5432) as proxy:
        through = real.set(host="127.0.0.1", port=proxy.port)
        yield proxy, through.render_as_string(hide_password=False)


async def test_database_down_is_503_and_readyz_names_it(
    services: Any, pg_url: str, models: FakeModelServer
) -> None:
    async with (
        database_behind_proxy(pg_url) as (proxy, database_url),
        running_platform(services, database_url, models, workers=0) as spine,
    ):
        task = await submit(spine)
        assert (await spine.client.get("/readyz")).status_code == 200

        await proxy.shut()
        for response in (
            await spine.client.get(f"/v1/tasks/{task['id']}"),
            await spine.client.get("/v1/tasks"),
            await spine.client.post("/v1/tasks", json=CHAT),
        ):
            error = assert_error(response, 503, "service_unavailable")
            assert "database is unreachable" in error["message"]
        ready = await spine.client.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "degraded"
        assert body["services"]["nats"] == "ok"
        assert "database is unreachable" in body["services"]["database"]

        await proxy.open()  # same port: the API recovers without a restart
        assert (await spine.client.get(f"/v1/tasks/{task['id']}")).status_code == 200
        assert (await spine.client.get("/readyz")).status_code == 200


async def test_a_database_that_stops_answering_is_a_503_in_bounded_time(
    services: Any, pg_url: str, models: FakeModelServer
) -> None:
    # A frozen server (SIGSTOP) keeps its connections open: requests once waited for it for as
    # long as it stayed frozen, and /readyz waited too, then said "ok".
    async with (
        database_behind_proxy(pg_url) as (proxy, database_url),
        running_platform(services, database_url, models, workers=0, database_timeout=2) as spine,
    ):
        task = await submit(spine)
        proxy.freeze()
        try:
            started = asyncio.get_running_loop().time()
            ready = await spine.client.get("/readyz")
            assert ready.status_code == 503
            assert "did not answer" in ready.json()["services"]["database"]
            assert ready.json()["services"]["nats"] == "ok"
            response = await spine.client.get(f"/v1/tasks/{task['id']}")
            assert_error(response, 503, "service_unavailable")
            assert response.headers["retry-after"]
            assert asyncio.get_running_loop().time() - started < 10
        finally:
            proxy.thaw()
        await eventually_ok(lambda: spine.client.get(f"/v1/tasks/{task['id']}"))
        await eventually_ok(lambda: spine.client.get("/readyz"))


async def test_a_task_feed_waits_through_a_database_outage_and_goes_on(
    services: Any, pg_url: str, models: FakeModelServer
) -> None:
    # The feed once broke off mid-stream (an unhandled ServiceUnavailable after the 200).
    async with (
        database_behind_proxy(pg_url) as (proxy, database_url),
        running_platform(services, database_url, models, workers=0) as spine,
    ):
        task = await submit(spine)
        seen: list[dict[str, Any]] = []

        async def follow() -> None:
            path = f"/v1/tasks/{task['id']}/events"
            async with spine.client.stream("GET", path) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        seen.append(json.loads(line[5:]))

        reader = asyncio.create_task(follow())
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.05)
        assert [e.get("state") for e in seen] == ["queued"]
        await proxy.shut()
        await asyncio.sleep(2.5)  # the feed's safety reads meet the outage
        assert not reader.done()
        await proxy.open()
        await eventually_ok(lambda: spine.client.get(f"/v1/tasks/{task['id']}"))
        cancelled = await spine.client.post(f"/v1/tasks/{task['id']}/cancel")
        assert cancelled.status_code in (200, 202), cancelled.text
        await asyncio.wait_for(reader, 30)
        assert seen[-1]["state"] == "cancelled"
        assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))


@contextlib.asynccontextmanager
async def nats_behind_proxy(nats_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A TCP proxy in front of the test NATS, and the same URL (credentials too) through it."""
    real = make_url(nats_url.replace("nats://", "postgresql://"))  # a URL parser at hand
    async with proxy_to(real.host or "127.0.0.1", real.port or 4222) as proxy:
        through = real.set(host="127.0.0.1", port=proxy.port)
        yield proxy, through.render_as_string(hide_password=False).replace("postgresql", "nats", 1)


async def test_readyz_says_a_frozen_nats_is_not_ready_and_a_dropped_one_at_once(
    services: Any, pg_url: str, models: FakeModelServer
) -> None:
    async with (
        nats_behind_proxy(services.nats_url) as (proxy, nats_url),
        running_platform(services, pg_url, models, nats_url=nats_url, workers=0) as spine,
    ):
        assert (await spine.client.get("/readyz")).status_code == 200
        proxy.freeze()  # a server that stopped answering keeps its connections open
        try:
            ready = await spine.client.get("/readyz")
            assert ready.status_code == 503
            assert "did not answer" in ready.json()["services"]["nats"]
            # nats-py leaves a request in flight to time out when its connection drops: /readyz
            # once waited its whole 2 s then, long enough to miss a server `spine up` restarted.
            asking = asyncio.ensure_future(spine.client.get("/readyz"))
            await asyncio.sleep(0.3)
            started = time.monotonic()
            await proxy.shut()
            ready = await asking
            assert time.monotonic() - started < 1.0
            assert ready.status_code == 503
            assert ready.json()["services"]["nats"] == "NATS connection lost while it was asked"
        finally:  # a failure above must not leave the platform's shutdown waiting
            proxy.thaw()
        await proxy.open()
        await eventually_ok(lambda: spine.client.get("/readyz"))


async def eventually_ok(call: Callable[[], Awaitable[httpx.Response]]) -> None:
    """Wait until ``call`` answers 200 (a thawed connection may first fail, then recover)."""
    for _ in range(100):
        if (await call()).status_code == 200:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("never answered 200")


@pytest.mark.usefixtures("clean_jetstream")
async def test_nats_down_at_submit_still_accepts_and_runs_the_task_later(
    services: Any, pg_url: str, models: FakeModelServer
) -> None:
    models.add(Rule(containing="while NATS was down", reply="published by the sweeper"))
    async with (
        nats_behind_proxy(services.nats_url) as (proxy, nats_url),
        running_platform(services, pg_url, models, nats_url=nats_url) as spine,
    ):
        # A first task proves the worker is consuming before NATS goes away.
        warm = await submit(spine)
        assert (await spine.wait_for(warm["id"]))["state"] == "succeeded"

        await proxy.shut()
        await eventually(lambda: not spine.platform.bus.connected)

        response = await spine.client.post(
            "/v1/tasks", json={"agent": "chat", "input": {"prompt": "while NATS was down"}}
        )
        assert response.status_code == 202, response.text
        task = response.json()
        assert task["state"] == "queued"
        waiting = await spine.platform.tasks.unpublished(grace=0, limit=10)
        assert [t.id for t in waiting] == [task["id"]]
        ready = await spine.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["services"] == {
            "nats": "disconnected",
            "database": "ok",
            "graph": "ok",
        }
        await asyncio.sleep(1.0)  # a few sweeps while NATS is down change nothing
        assert (await spine.client.get(f"/v1/tasks/{task['id']}")).json()["state"] == "queued"

        await proxy.open()
        done = await spine.wait_for(task["id"], timeout=30)
        assert done["state"] == "succeeded", done
        assert done["result"]["text"] == "published by the sweeper"
        assert await spine.platform.tasks.unpublished(grace=0, limit=10) == []
        assert (await spine.client.get("/readyz")).status_code == 200
