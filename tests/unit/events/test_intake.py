"""Reading events off the EVENTS stream: what a rejected message leaves for its row."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from spine.events.cloudevent import dedupe_id
from spine.events.intake import RejectedEvent, read_event
from spine.events.schemas import EventSchemas

AT = datetime(2026, 3, 1, tzinfo=UTC)
SUBJECT = "spine.events.acme.com.example.thing"
GOOD = {"specversion": "1.0", "id": "e-1", "source": "/s", "type": "com.example.thing"}


def rejected(data: bytes, *, subject: str = SUBJECT, sequence: int = 7) -> RejectedEvent:
    with pytest.raises(RejectedEvent) as caught:
        read_event(
            subject,
            data,
            None,
            stream_time=AT,
            schemas=EventSchemas({}),
            sequence=sequence,
            max_bytes=2048,
        )
    return caught.value


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (json.dumps({**GOOD, "data": {"a": "x\u0000y"}}).encode(), "data.a"),
        (b'{"specversion":"1.0","id":"e-1","source":"/s","type":"t","data":"\\ud800"}', "data"),
        (json.dumps({**GOOD, "data": 2**64}).encode(), "data"),
        (b'{"specversion":"1.0","id":"e-1","source":"/s","type":"t","data":1e999}', "data"),
        (b'{"specversion":"1.0","id":"e-1","source":"/s","type":"t","data":NaN}', "data"),
        (json.dumps({**GOOD, "data": json.loads("[" * 70 + "]" * 70)}).encode(), "data"),
        (json.dumps({**GOOD, "time": "yesterday"}).encode(), "time"),
    ],
)
def test_an_invalid_event_with_a_readable_id_is_blamed_on_its_key(data: bytes, field: str) -> None:
    error = rejected(data)
    assert error.field is not None and error.field.startswith(field)
    assert error.received is not None
    assert error.received.tenant == "acme"
    assert error.received.key == dedupe_id("acme", "/s", "e-1")
    row = error.received.event.to_dict()
    assert (row["id"], row["source"], row["spinetenant"]) == ("e-1", "/s", "acme")
    assert "data" not in row  # the row never holds what could not be stored


@pytest.mark.parametrize(
    "data",
    [
        json.dumps({**GOOD, "id": 5}).encode(),
        json.dumps({**GOOD, "id": "b\u001fc"}).encode(),
        b"\xff\xfe not UTF-8",
        b"not json",
        b"[1, 2]",
    ],
)
def test_an_event_without_a_readable_id_is_blamed_on_its_place_in_the_stream(
    data: bytes,
) -> None:
    one, two = rejected(data, sequence=7), rejected(data, sequence=8)
    assert one.received is not None and two.received is not None
    assert one.received.tenant == "acme"
    assert one.received.key != two.received.key  # one row per message
    replayed = rejected(data, sequence=7).received
    assert replayed is not None and replayed.key == one.received.key  # a replay: the same row
    row = one.received.event.to_dict()
    assert row["type"]  # what the subject says, if not the event
    assert row["spinetenant"] == "acme"


def test_a_message_whose_subject_names_no_tenant_has_no_row() -> None:
    assert rejected(b"not json", subject="spine.events.a~ZZ.t").received is None


def test_an_event_over_the_size_limit_is_rejected_with_a_row() -> None:
    big = json.dumps({**GOOD, "data": {"blob": "x" * 4000}}).encode()
    error = rejected(big)
    assert "over the limit of 2048" in error.message
    assert error.received is not None
    assert error.received.key == dedupe_id("acme", "/s", "e-1")
    assert "data" not in error.received.event.to_dict()
    small = json.dumps({**GOOD, "data": {"blob": "x"}}).encode()
    accepted = read_event(
        SUBJECT, small, None, stream_time=AT, schemas=EventSchemas({}), max_bytes=2048
    )
    assert accepted.event.data == {"blob": "x"}
