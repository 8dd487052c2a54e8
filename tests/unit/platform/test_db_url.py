"""Plain database URLs, as the seed writes them, map to SQLAlchemy's async drivers."""

from __future__ import annotations

import pytest

from spine.platform.db import async_url
from spine.platform.errors import ConfigurationError


@pytest.mark.parametrize(
    ("url", "driver", "database"),
    [
        ("sqlite:///data/genai.db", "sqlite+aiosqlite", "data/genai.db"),
        ("sqlite:////abs/path/genai.db", "sqlite+aiosqlite", "/abs/path/genai.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite", "x.db"),
        ("postgresql://user:pass@db:5432/genai", "postgresql+asyncpg", "genai"),
        ("postgres://user@db/genai", "postgresql+asyncpg", "genai"),
        ("postgresql+asyncpg://user@db/genai", "postgresql+asyncpg", "genai"),
    ],
)
def test_plain_urls_get_the_async_driver(url: str, driver: str, database: str) -> None:
    parsed = async_url(url)
    assert parsed.drivername == driver
    assert parsed.database == database


def test_credentials_host_and_port_are_kept() -> None:
    parsed = async_url("postgresql://user:p%40ss@db.internal:6543/genai")
    assert (parsed.username, parsed.password, parsed.host, parsed.port) == (
        "user",
        "p@ss",
        "db.internal",
        6543,
    )


@pytest.mark.parametrize("url", ["mysql://u@h/db", "oracle://u@h/db", "mongodb://h/db"])
def test_unsupported_databases_name_the_setting(url: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        async_url(url)
    assert refused.value.field == "GENAI_DATABASE_URL"
    assert "unsupported database" in refused.value.message


@pytest.mark.parametrize("url", ["not a url", "", "://nothing"])
def test_garbage_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        async_url(url)
    assert refused.value.field == "GENAI_DATABASE_URL"
