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
