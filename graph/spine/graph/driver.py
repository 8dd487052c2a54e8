"""The graph driver: the official ``neo4j`` async driver, against Neo4j or FalkorDB over Bolt."""

from __future__ import annotations

import asyncio

from neo4j import AsyncDriver, AsyncGraphDatabase
from neo4j.exceptions import Neo4jError
from neo4j.exceptions import ServiceUnavailable as Neo4jUnavailable

from spine.platform.errors import ConfigurationError, ServiceUnavailable
from spine.platform.settings import Settings

__all__ = ["open_driver", "ping"]


def open_driver(settings: Settings) -> AsyncDriver:
    """Open a driver for ``GENAI_NEO4J_URI``; FalkorDB's Bolt port takes no credentials."""
    if settings.neo4j_uri is None:
        raise ConfigurationError("GENAI_NEO4J_URI is not set", field="GENAI_NEO4J_URI")
    auth = None
    if settings.neo4j_user and settings.neo4j_password is not None:
        auth = (settings.neo4j_user, settings.neo4j_password.get_secret_value())
    return AsyncGraphDatabase.driver(settings.neo4j_uri, auth=auth, connection_timeout=5.0)


async def ping(driver: AsyncDriver, *, timeout: float = 3.0) -> None:
    """Run ``RETURN 1``; raise :class:`ServiceUnavailable` when the server does not answer.

    FalkorDB 4.16 leaves a stale handler behind when a Bolt connection closes, and the next
    connection given the same socket never gets an answer; a second attempt on a fresh
    connection does. Neo4j answers the first time.
    """
    last: BaseException | None = None
    for _ in range(2):
        try:
            await asyncio.wait_for(_return_one(driver), timeout)
            return
        except (Neo4jUnavailable, Neo4jError, OSError, TimeoutError) as exc:
            last = exc
    raise ServiceUnavailable(f"the graph server does not answer: {last!r}") from last


async def _return_one(driver: AsyncDriver) -> None:
    async with driver.session() as session:
        result = await session.run("RETURN 1 AS one")
        await result.consume()
