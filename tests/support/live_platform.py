"""The one builder of a running test platform: an API server and workers in the test's loop.

A test module starts a live platform with :func:`running_platform`, passing only the settings
it changes; its ``spine`` fixture is a thin call to it. :func:`run_platform` starts one on
settings already built, for a test that stops a platform and starts it again on the very same
settings (port, response-cache prefix).

Not ``platform.py``: a script run by path from this folder (``mcp_echo_server.py``) has the
folder first on ``sys.path``, and would import that in place of the standard ``platform``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from spine.platform.app.api import create_app
from spine.platform.app.api.serving import server_config
from spine.platform.app.wiring import Platform
from spine.platform.keys import KeyStore, Role
from spine.platform.settings import Settings
from support.fake_models import FakeModelServer
from support.servers import BackingServices
from support.settings import make_settings

TENANT = "acme"
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "dead_lettered"})


@dataclass
class RunningPlatform:
    """An API server and its workers, running in the test's event loop.

    Attributes:
        settings: The settings both the API and the workers were built from.
        url: The API's base URL.
        key: An admin key of ``tenant``.
        tenant: The tenant of ``key`` (``acme``).
        client: An HTTP client for ``url`` that sends ``key``.
        platform: The API server's platform (its database, bus, key store...).
        workers: The in-process workers' platforms, one per worker.
    """

    settings: Settings
    url: str
    key: str
    tenant: str
    client: httpx.AsyncClient
    platform: Platform
    workers: list[Platform] = field(default_factory=list)

    async def new_key(self, tenant: str, *, role: Role = "member") -> str:
        """Issue a key of a tenant (a member's unless ``role`` says) and return its secret."""
        issued = await self.platform.keys.create(tenant=tenant, role=role)
        return issued.secret

    async def wait_for(self, task_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """Poll a task until it ends and return it."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            body: dict[str, Any] = (await self.client.get(f"/v1/tasks/{task_id}")).json()
            if body["state"] in FINAL_STATES:
                return body
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"task {task_id} still {body['state']} after {timeout}s")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_platform(
    services: BackingServices,
    database_url: str,
    models: FakeModelServer,
    *,
    workers: int = 1,
    **overrides: Any,
) -> AsyncIterator[RunningPlatform]:
    """Serve the API and run workers in this event loop until the block ends.

    Args:
        services: The session's backing servers.
        database_url: The test's own database.
        models: The fake model server the platform calls as Ollama.
        workers: How many in-process workers consume tasks; 0 for an API alone.
        **overrides: Settings to change, as :func:`support.settings.make_settings` takes them.

    Yields:
        The running platform, with an admin key of tenant ``acme`` and a client that sends it.
    """
    settings = make_settings(services, database_url, models, **overrides)
    async with run_platform(settings, workers=workers) as running:
        yield running


@contextlib.asynccontextmanager
async def run_platform(settings: Settings, *, workers: int = 1) -> AsyncIterator[RunningPlatform]:
    """Serve the API and run ``workers`` workers on ``settings`` until the block ends.

    Args:
        settings: The settings, from :func:`support.settings.make_settings`.
        workers: How many in-process workers consume tasks; 0 for an API alone.

    Yields:
        The running platform, with an admin key of tenant ``acme`` and a client that sends it.
    """
    app = create_app(settings)
    # As `spine api` serves it (deadlines, limits), on loopback.
    server = uvicorn.Server(server_config(app, settings.api, host="127.0.0.1", lifespan="on"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.02)
    platform: Platform = app.state.platform
    await platform.bus.wait_connected(10)
    await platform.ensure_streams_when_connected()
    stop = asyncio.Event()
    worker_platforms = [Platform.build(settings, name=f"test-worker-{i}") for i in range(workers)]
    runs = []
    for wp in worker_platforms:
        await wp.start()
        runs.append(asyncio.create_task(wp.worker().run(stop)))
    issued = await KeyStore(platform.db).create(tenant=TENANT, role="admin")
    url = f"http://127.0.0.1:{settings.api.port}"
    async with httpx.AsyncClient(
        base_url=url, timeout=30, headers={"Authorization": f"Bearer {issued.secret}"}
    ) as client:
        try:
            yield RunningPlatform(
                settings=settings,
                url=url,
                key=issued.secret,
                tenant=TENANT,
                client=client,
                platform=platform,
                workers=worker_platforms,
            )
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), 30)
            for wp in worker_platforms:
                await wp.close()
            server.should_exit = True
            await serving
