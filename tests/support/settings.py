"""Settings for a test platform: the session's servers, the fake model server, short timers."""

from __future__ import annotations

import uuid
from typing import Any

from spine.platform.settings import Settings, load_settings
from support.fake_models import FakeModelServer
from support.ports import free_port
from support.servers import BackingServices


def make_settings(
    services: BackingServices, database_url: str, models: FakeModelServer, **overrides: Any
) -> Settings:
    """Build the settings of one test platform.

    Args:
        services: The session's backing servers (NATS, Redis, the graph server).
        database_url: The test's own database.
        models: The fake model server, which stands in for Ollama.
        **overrides: Settings fields to change. A dict for a section that has defaults here
            (``api``, ``worker``, ``cache``) is merged into them, so a test changes one timer
            without restating the others.

    Returns:
        The settings; no ``.env`` file is read, whichever directory the test runs in.
    """
    values: dict[str, Any] = {
        "database_url": database_url,
        "nats_url": services.nats_url,
        "redis_url": services.redis_url,
        "neo4j_uri": services.neo4j_uri,
        "falkordb_url": services.falkordb_url,
        "ollama_url": models.url,
        "default_provider": "ollama",
        "api": {"port": free_port(), "sweep_interval": 0.5, "key_cache_seconds": 0},
        "worker": {"ack_wait": 3, "max_attempts": 3, "backoff": [0.2, 0.5], "concurrency": 8},
        # Tests share one Redis: each gets its own response cache, never an earlier test's.
        "cache": {"prefix": f"spine:test:{uuid.uuid4().hex}:"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return load_settings(_env_file=None, **values)
