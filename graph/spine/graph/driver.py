"""The graph driver: the official ``neo4j`` async driver, against Neo4j or FalkorDB over Bolt."""

from __future__ import annotations

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
    return AsyncGraphDatabase.driver(settings.neo4j_uri, auth=auth)


async def ping(driver: AsyncDriver) -> None:
    """Run ``RETURN 1``; raise :class:`ServiceUnavailable` when the server does not answer."""
    try:
        async with driver.session() as session:
            result = await session.run("RETURN 1 AS one")
            await result.consume()
    except (Neo4jUnavailable, Neo4jError, OSError) as exc:
        raise ServiceUnavailable(f"the graph server does not answer: {exc}") from exc
