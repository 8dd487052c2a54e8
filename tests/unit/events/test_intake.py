"""Reading events off the EVENTS stream: what a rejected message leaves for its row."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spine.events.cloudevent import dedupe_id
from spine.events.intake import RejectedEvent, read_event
from spine.events.log import ReceivedEvent
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


# -- property: whatever a NATS publisher sends, the message is read or rejected, nothing else --

_ATTRIBUTES = st.sampled_from(["specversion", "id", "source", "type", "time", "spinetenant", "x"])
_HEADERS = st.dictionaries(
    st.one_of(
        _ATTRIBUTES.map(lambda name: f"ce-{name}"),
        st.sampled_from(["Content-Type", "content-type", "Spine-Tenant", "CE-SpecVersion"]),
        st.text(max_size=8),
    ),
    st.one_of(
        st.sampled_from(["1.0", "application/json", "text/plain", "application/cloudevents+json"]),
        st.text(max_size=12),
    ),
    max_size=8,
)
_BODIES = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda event: json.dumps(event).encode(),
        st.dictionaries(_ATTRIBUTES, st.one_of(st.text(max_size=8), st.integers()), max_size=6),
    ),
)


@settings(max_examples=400, deadline=None)
@given(headers=_HEADERS, data=_BODIES)
def test_any_message_on_nats_is_read_or_rejected_naming_a_reason(
    headers: dict[str, str], data: bytes
) -> None:
    outcome: ReceivedEvent | RejectedEvent
    try:
        outcome = read_event(
            SUBJECT, data, headers, stream_time=AT, schemas=EventSchemas({}), max_bytes=2048
        )
    except RejectedEvent as exc:  # a row or a dead letter says why; no other error escapes
        outcome = exc
    if isinstance(outcome, RejectedEvent):
        assert outcome.message
    else:
        assert outcome.tenant == "acme" and outcome.event.id


def test_a_binary_mode_message_on_nats_is_read_from_its_headers() -> None:
    headers = {f"ce-{k}": v for k, v in GOOD.items()} | {"Content-Type": "application/json"}
    received = read_event(SUBJECT, b'{"a": 1}', headers, stream_time=AT, schemas=EventSchemas({}))
    assert (received.event.id, received.event.data) == ("e-1", {"a": 1})
    # A CloudEvents content type means the body is the whole event, whatever the headers say.
    structured = headers | {"Content-Type": "application/cloudevents+json"}
    body = json.dumps({**GOOD, "id": "e-2"}).encode()
    assert (
        read_event(SUBJECT, body, structured, stream_time=AT, schemas=EventSchemas({})).event.id
        == "e-2"
    )
