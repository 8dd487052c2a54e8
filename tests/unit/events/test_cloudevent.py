"""CloudEvents parsing: the SDK's own output in each mode, and malformed events named."""

from __future__ import annotations

from typing import Any

import pytest
from cloudevents.core.bindings.http import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as SdkEvent

from spine.events.cloudevent import (
    InvalidEvent,
    dedupe_id,
    parse_batch,
    parse_binary,
    parse_structured,
    same_json,
)
from spine.events.paths import MISSING, resolve
from spine.events.schemas import EventSchemas


def sdk_event(**attributes: Any) -> SdkEvent:
    return SdkEvent(
        attributes={"type": "com.example.x", "source": "/src", "id": "e-1", **attributes},
        data={"a": {"b": [10, {"c": "deep"}]}},
    )


def test_the_sdks_structured_and_binary_modes_parse_to_the_same_event() -> None:
    event = sdk_event(subject="s/1", myext="v")
    structured = to_structured(event, JSONFormat())
    binary = to_binary(event, JSONFormat())
    one = parse_structured(structured.body)
    two = parse_binary(binary.headers, binary.body)
    for parsed in (one, two):
        assert (parsed.id, parsed.source, parsed.type, parsed.subject) == (
            "e-1",
            "/src",
            "com.example.x",
            "s/1",
        )
        assert parsed.extensions["myext"] == "v"
        assert parsed.data == {"a": {"b": [10, {"c": "deep"}]}}
        assert parsed.time is not None and parsed.time.tzinfo is not None
    assert one.time == two.time


def test_a_batch_names_the_index_of_a_bad_event() -> None:
    good = JSONFormat().write(sdk_event())
    events = parse_batch(b"[" + good + b"," + good + b"]")
    assert len(events) == 2
    with pytest.raises(InvalidEvent) as caught:
        parse_batch(b"[" + good + b', {"specversion": "1.0", "id": "x", "source": "/s"}]')
    assert caught.value.field == "[1].type"
    for body, field in ((b"{}", "body"), (b"[]", "body"), (b"nope", "body")):
        with pytest.raises(InvalidEvent) as caught:
            parse_batch(body)
        assert caught.value.field == field


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"id": "1", "source": "/s", "type": "t"}, "specversion"),
        ({"specversion": "2.0", "id": "1", "source": "/s", "type": "t"}, "specversion"),
        ({"specversion": "1.0", "id": 5, "source": "/s", "type": "t"}, "id"),
        ({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "time": "noon"}, "time"),
        ({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "UPPER": "x"}, "UPPER"),
        ({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "ext": {"a": 1}}, "ext"),
        (
            {
                "specversion": "1.0",
                "id": "1",
                "source": "/s",
                "type": "t",
                "data": 1,
                "data_base64": "AA==",
            },
            "data",
        ),
    ],
)
def test_malformed_events_name_the_attribute(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_structured(raw)
    assert caught.value.field == field


def test_binary_mode_keeps_non_json_data_as_base64_and_needs_specversion() -> None:
    event = parse_binary(
        {
            "ce-specversion": "1.0",
            "ce-id": "1",
            "ce-source": "/s",
            "ce-type": "t",
            "content-type": "text/plain",
        },
        b"hello",
    )
    assert event.data is None
    assert event.data_base64 == "aGVsbG8="
    with pytest.raises(InvalidEvent) as caught:
        parse_binary({"ce-id": "1"}, b"{}")
    assert caught.value.field == "specversion"


def test_the_dedupe_id_is_scoped_by_tenant_and_source() -> None:
    assert dedupe_id("a", "/s", "1") == dedupe_id("a", "/s", "1")
    assert (
        len({dedupe_id("a", "/s", "1"), dedupe_id("b", "/s", "1"), dedupe_id("a", "/t", "1")}) == 3
    )


def test_paths_walk_data_and_attributes() -> None:
    event = parse_structured(JSONFormat().write(sdk_event(subject="sub")))
    assert resolve(event, "data.a.b.1.c") == "deep"
    assert resolve(event, "data.a.b.0") == 10
    assert resolve(event, "subject") == "sub"
    assert resolve(event, "data.a.missing") is MISSING
    assert resolve(event, "data.a.b.7") is MISSING


def test_a_schema_violation_names_the_field_in_the_data() -> None:
    schemas = EventSchemas(
        {
            "com.example.x": {
                "type": "object",
                "required": ["a"],
                "properties": {"a": {"type": "object", "required": ["z"]}},
            }
        }
    )
    event = parse_structured(JSONFormat().write(sdk_event()))
    with pytest.raises(InvalidEvent) as caught:
        schemas.check(event)
    assert caught.value.field == "data.a.z"
    with pytest.raises(ValueError, match="not a valid JSON Schema"):
        EventSchemas({"t": {"type": "nonsense"}})


BASE = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"id": "b\x1fc", "source": "/a"}, "id"),
        ({"id": "c", "source": "/a\x1fb"}, "source"),
        ({"id": "tab\there"}, "id"),
        ({"source": "/s\x7f"}, "source"),
        ({"id": "line\nbreak"}, "id"),
    ],
)
def test_control_characters_in_id_or_source_are_refused(
    changes: dict[str, Any], field: str
) -> None:
    # dedupe_id joins tenant, source and id with U+001F: one inside either made two events
    # ({id: "b\x1fc", source: "/a"} and {id: "c", source: "/a\x1fb"}) one key.
    with pytest.raises(InvalidEvent) as caught:
        parse_structured({**BASE, **changes})
    assert caught.value.field == field
    assert "control characters" in caught.value.message


@pytest.mark.parametrize("value", ["z%FF", "z%FE", "z%C3", "z%", "z%G1", "100%"])
def test_binary_mode_refuses_an_id_that_is_not_percent_encoded_utf8(value: str) -> None:
    headers = {"ce-specversion": "1.0", "ce-id": value, "ce-source": "/s", "ce-type": "t"}
    with pytest.raises(InvalidEvent) as caught:
        parse_binary(headers, b"")
    assert caught.value.field == "id"
    assert "ce-id" in caught.value.message


def test_binary_mode_decodes_valid_percent_encoding() -> None:
    headers = {"ce-specversion": "1.0", "ce-id": "%E2%82%AC%201", "ce-source": "/s", "ce-type": "t"}
    assert parse_binary(headers, b"").id == "€ 1"


@pytest.mark.parametrize("value", [1700000000, "1700000000", -1, 1.5, "0", True])
def test_a_time_given_as_a_number_is_refused(value: Any) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_structured({**BASE, "time": value})
    assert caught.value.field == "time"
    assert "RFC 3339" in caught.value.message


def test_an_rfc3339_time_is_read() -> None:
    event = parse_structured({**BASE, "time": "2026-01-01T09:30:00.5+02:00"})
    assert event.time is not None and event.time.isoformat() == "2026-01-01T09:30:00.500000+02:00"


def test_data_base64_must_be_base64() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_structured({**BASE, "data_base64": "!!notbase64"})
    assert caught.value.field == "data_base64"
    assert "base64" in caught.value.message
    assert parse_structured({**BASE, "data_base64": "aGVsbG8="}).data_base64 == "aGVsbG8="


@pytest.mark.parametrize("attribute", ["subject", "dataschema"])
def test_an_empty_optional_attribute_is_named_in_words(attribute: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_structured({**BASE, attribute: ""})
    assert caught.value.field == attribute
    assert caught.value.message == f"{attribute}: must not be empty (leave it out instead)"


def test_an_extension_must_be_a_string_an_integer_or_a_boolean() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_structured({**BASE, "ratio": 1.5})
    assert caught.value.field == "ratio"
    assert "an integer" in caught.value.message
    assert "number" not in caught.value.message
    event = parse_structured({**BASE, "count": 3, "flag": True, "name": "x"})
    assert event.extensions == {"count": 3, "flag": True, "name": "x"}


def test_same_json_compares_numbers_by_value_as_the_database_gives_them_back() -> None:
    assert same_json({"a": [1e300, 1.0, -0.0]}, {"a": [10**300, 1.0, 0.0]})
    assert same_json({"a": 1, "b": "x"}, {"b": "x", "a": 1.0})
    assert not same_json({"a": 1}, {"a": 2})
    assert not same_json({"a": True}, {"a": 1})
    assert not same_json({"a": "1"}, {"a": 1})
    assert not same_json({"a": [1, 2]}, {"a": [1, 2, 3]})
    assert not same_json({"a": None}, {})
