"""``GET /v1/tools`` through the running app: what a key may use, with schemas."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from spine.platform.app.api import create_app
from support.fake_models import FakeModelServer
from support.live_platform import RunningPlatform, running_platform
from support.settings import make_settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def spine(
    services: Any, pg_url: str, models: FakeModelServer
) -> AsyncIterator[RunningPlatform]:
    async with running_platform(services, pg_url, models) as running:
        yield running


async def test_a_key_sees_the_builtin_tools_with_their_schemas(spine: RunningPlatform) -> None:
    response = await spine.client.get("/v1/tools")
    assert response.status_code == 200, response.text
    tools = {tool["name"]: tool for tool in response.json()["data"]}
    assert list(tools) == [
        "calculator",
        "current_time",
        "graph_neighbors",
        "graph_query",
        "http_fetch",
        "hybrid_search",
        "publish_event",
        "submit_task",
        "vector_search",
    ]
    fetch = tools["http_fetch"]
    assert fetch["effect"] == "read"
    assert fetch["needs_approval"] is False
    assert fetch["source"] == "builtin"
    assert fetch["timeout_seconds"] > 0
    assert fetch["parameters"]["type"] == "object"
    assert fetch["parameters"]["required"] == ["url"]
    assert fetch["parameters"]["additionalProperties"] is False
    assert tools["publish_event"]["effect"] == "external"
    assert tools["calculator"]["parameters"]["properties"]["expression"]["maxLength"] == 500

    one = await spine.client.get("/v1/tools/calculator")
    assert one.status_code == 200
    assert one.json() == tools["calculator"]


async def test_unknown_tools_and_missing_keys_get_the_one_error_shape(
    spine: RunningPlatform,
) -> None:
    missing = await spine.client.get("/v1/tools/rm_rf")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found"
    async with httpx.AsyncClient(base_url=spine.url) as anonymous:
        refused = await anonymous.get("/v1/tools")
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "unauthorized"


async def test_each_tenant_sees_only_what_its_allowlist_allows(
    services: Any, pg_url: str, models: FakeModelServer
) -> None:
    settings = make_settings(
        services,
        pg_url,
        models,
        tools={"default": ["calculator", "current_time"], "tenants": {"globex": ["http_*"]}},
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        keys = app.state.platform.keys
        acme = (await keys.create(tenant="acme")).secret
        globex = (await keys.create(tenant="globex")).secret
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://spine.test"
        ) as client:

            async def names(key: str) -> list[str]:
                response = await client.get("/v1/tools", headers={"Authorization": f"Bearer {key}"})
                assert response.status_code == 200, response.text
                return [tool["name"] for tool in response.json()["data"]]

            assert await names(acme) == ["calculator", "current_time"]
            assert await names(globex) == ["http_fetch"]
            hidden = await client.get(
                "/v1/tools/calculator", headers={"Authorization": f"Bearer {globex}"}
            )
            assert hidden.status_code == 404


async def test_tools_named_in_the_settings_wait_for_approval(
    services: Any, pg_url: str, models: FakeModelServer
) -> None:
    approval = {"approval": ["publish_event"]}
    async with running_platform(services, pg_url, models, tools=approval) as spine:
        tools = {t["name"]: t for t in (await spine.client.get("/v1/tools")).json()["data"]}
        assert tools["publish_event"]["needs_approval"] is True
        assert tools["calculator"]["needs_approval"] is False
        assert spine.workers[0].tools.get("publish_event").needs_approval  # type: ignore[union-attr]
