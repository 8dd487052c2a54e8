"""A tenant's events subject names that tenant and no other: a publisher granted one tenant's
subjects cannot write another's events (``acme.eu`` and ``acme_eu`` once shared a token)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spine.events.intake import RejectedEvent, read_event
from spine.events.permissions import publisher_grant
from spine.events.schemas import EventSchemas
from spine.events.subjects import event_subject, tenant_of_token, tenant_token

NAMES = st.text(min_size=1, max_size=40)


@given(NAMES, NAMES)
def test_two_tenants_never_share_a_token(a: str, b: str) -> None:
    if a != b:
        assert tenant_token(a) != tenant_token(b)


@given(NAMES)
def test_a_token_is_one_subject_token_and_names_its_tenant_back(name: str) -> None:
    token = tenant_token(name)
    assert token and not any(c in token for c in ".*> \t\r\n")
    assert tenant_of_token(token) == name


@pytest.mark.parametrize("token", ["acme~2eeu", "~", "a~2", "x~C3", "acme~5F"])
def test_a_token_no_tenant_spells_names_none(token: str) -> None:
    assert tenant_of_token(token) is None


def test_dotted_and_underscored_tenants_get_their_own_subjects() -> None:
    assert publisher_grant("acme.eu", "p").publish == ("spine.events.acme~2Eeu.>",)
    assert publisher_grant("acme_eu", "p").publish == ("spine.events.acme_eu.>",)
    assert event_subject("acme.eu", "order.created") == "spine.events.acme~2Eeu.order.created"


def _read(subject: str, claimed: str | None) -> str:
    envelope = (
        '{"specversion": "1.0", "id": "1", "source": "/s", "type": "order.created"'
        + (f', "spinetenant": "{claimed}"' if claimed else "")
        + "}"
    )
    received = read_event(
        subject,
        envelope.encode(),
        {},
        stream_time=datetime.now(UTC),
        schemas=EventSchemas(),
    )
    return received.tenant


def test_an_event_belongs_to_the_tenant_its_subject_names() -> None:
    assert _read("spine.events.acme~2Eeu.order.created", None) == "acme.eu"
    assert _read("spine.events.acme_eu.order.created", None) == "acme_eu"
    assert _read("spine.events.acme~2Eeu.order.created", "acme.eu") == "acme.eu"


@pytest.mark.parametrize(
    ("subject", "claimed"),
    [
        ("spine.events.acme_eu.order.created", "acme.eu"),  # acme_eu's publisher claims acme.eu
        ("spine.events.acme~2Eeu.order.created", "acme_eu"),
        ("spine.events.acme~2eeu.order.created", None),  # no tenant's token
    ],
)
def test_a_publisher_cannot_claim_another_tenant(subject: str, claimed: str | None) -> None:
    with pytest.raises(RejectedEvent):
        _read(subject, claimed)
