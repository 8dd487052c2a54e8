"""The client address the API records: X-Forwarded-For only from a trusted proxy."""

from __future__ import annotations

from typing import Any

import pytest

from spine.platform.app.api.serving import server_config
from spine.platform.errors import ConfigurationError
from spine.platform.settings import ApiSettings, load_settings


async def client_seen(proxies: list[str], peer: str, forwarded: str) -> str:
    """Return the client address the app sees behind the server's configured middleware."""
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["client"][0])

    config = server_config(app, ApiSettings(trusted_proxies=proxies))
    config.load()
    scope = {
        "type": "http",
        "client": (peer, 5000),
        "headers": [(b"x-forwarded-for", forwarded.encode())],
    }
    await config.loaded_app(scope, None, None)
    return seen[0]


@pytest.mark.parametrize(
    ("proxies", "peer", "expected"),
    [
        ([], "127.0.0.1", "127.0.0.1"),  # uvicorn alone would believe a loopback peer
        ([], "10.0.0.5", "10.0.0.5"),
        (["10.0.0.0/8"], "10.0.0.5", "203.0.113.9"),
        (["10.0.0.0/8"], "192.0.2.1", "192.0.2.1"),  # not the proxy: its header is ignored
        (["*"], "192.0.2.1", "203.0.113.9"),
    ],
)
async def test_forwarded_for_names_the_client_only_behind_a_trusted_proxy(
    proxies: list[str], peer: str, expected: str
) -> None:
    assert await client_seen(proxies, peer, "203.0.113.9") == expected


def test_trusted_proxies_are_read_from_the_environment_and_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENAI_API__TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")
    assert load_settings(_env_file=None).api.trusted_proxies == ["10.0.0.0/8", "127.0.0.1"]
    monkeypatch.setenv("GENAI_API__TRUSTED_PROXIES", "10.0.0.0/8,proxy.local")
    with pytest.raises(ConfigurationError, match="TRUSTED_PROXIES"):
        load_settings(_env_file=None)
