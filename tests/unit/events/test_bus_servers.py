"""GENAI_NATS_URL names one server or a cluster's servers, comma-separated."""

from __future__ import annotations

import pytest

from spine.events.bus import NatsBus, server_list
from spine.platform.errors import ConfigurationError


def test_one_url_is_one_server() -> None:
    assert server_list("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]


def test_a_comma_separated_list_is_every_server_in_order() -> None:
    url = "nats://a:4222, nats://b:4222 ,nats://c:4222,"
    assert server_list(url) == ["nats://a:4222", "nats://b:4222", "nats://c:4222"]


def test_a_list_without_a_server_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as raised:
        server_list(" , ")
    assert raised.value.field == "GENAI_NATS_URL"


def test_the_bus_shows_every_server_without_its_password() -> None:
    bus = NatsBus("nats://op:secret@a:4222,nats://op:secret@b:4222", name="test")
    assert bus.url == "nats://op:***@a:4222,nats://op:***@b:4222"
