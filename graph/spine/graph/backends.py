"""Which graph server the settings name, and the store that talks to it.

``GENAI_NEO4J_URI`` names Neo4j (Bolt, :class:`~spine.graph.neo4j_store.Neo4jStore`);
``GENAI_FALKORDB_URL`` names FalkorDB (its Redis protocol,
:class:`~spine.graph.falkordb_store.FalkorStore`). With both set, Neo4j is the graph: a URL
set by hand wins over one that ``spine up`` may have filled in. With neither, there is no graph.

Each store's module is imported only when its server is the graph: the Neo4j driver alone
holds some 35 MiB (its temporal and packstream tables) that a FalkorDB platform never uses.
"""

from __future__ import annotations

import logging

from spine.graph.store import GraphStore
from spine.platform.settings import Settings

__all__ = ["describe_graph", "open_store"]

logger = logging.getLogger(__name__)


def open_store(settings: Settings) -> GraphStore | None:
    """Open (not connect) the store of the configured graph server, or ``None``."""
    if settings.neo4j_uri is not None:
        if settings.falkordb_url is not None:
            logger.warning("GENAI_NEO4J_URI and GENAI_FALKORDB_URL are both set; using Neo4j")
        from spine.graph.neo4j_store import Neo4jStore

        password = settings.neo4j_password
        return Neo4jStore.connect(
            settings.neo4j_uri,
            user=settings.neo4j_user,
            password=password.get_secret_value() if password is not None else None,
            database=settings.knowledge.neo4j_database,
        )
    if settings.falkordb_url is not None:
        from spine.graph.falkordb_store import FalkorStore

        return FalkorStore.connect(settings.falkordb_url)
    return None


def describe_graph(settings: Settings) -> str | None:
    """Name the configured graph server for people, without its password (``None``: none)."""
    if settings.neo4j_uri is not None:
        return f"Neo4j at {settings.neo4j_uri} (Bolt)"
    if settings.falkordb_url is not None:
        return f"FalkorDB at {_without_password(settings.falkordb_url)} (Redis protocol)"
    return None


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user = credentials.partition(":")[0]
    return f"{scheme}://{user + ':***' if user else '***'}@{host}"
