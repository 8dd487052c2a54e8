"""Kept Responses API answers, on both databases: per tenant, deleted, and forgotten by age."""

from __future__ import annotations

from datetime import timedelta

import pytest

from spine.platform.db import Database
from spine.platform.errors import NotFound
from spine.platform.responses import ResponseStore
from spine.platform.schema import utcnow

pytestmark = pytest.mark.integration

CONVERSATION = [
    {"role": "user", "content": "ça va? \U0001f600"},
    {"role": "assistant", "content": "oui"},
]


def body(response_id: str) -> dict[str, object]:
    return {"id": response_id, "object": "response", "output": [], "status": "completed"}


async def test_a_kept_response_is_read_back_whole_by_its_tenant_only(db: Database) -> None:
    store = ResponseStore(db)
    items = [{"id": "item_1", "type": "message", "role": "user", "content": "ça va?"}]
    await store.keep(
        tenant="acme", body=body("resp_1"), conversation=CONVERSATION, input_items=items
    )
    kept = await store.get("resp_1", tenant="acme")
    assert (kept.body, kept.conversation, kept.input_items) == (body("resp_1"), CONVERSATION, items)
    with pytest.raises(NotFound):
        await store.get("resp_1", tenant="globex")
    with pytest.raises(NotFound):
        await store.delete("resp_1", tenant="globex")
    await store.delete("resp_1", tenant="acme")
    with pytest.raises(NotFound):
        await store.get("resp_1", tenant="acme")
    with pytest.raises(NotFound):
        await store.delete("resp_1", tenant="acme")


async def test_responses_past_their_retention_are_forgotten(db: Database) -> None:
    store = ResponseStore(db)
    for name in ("resp_old", "resp_new"):
        await store.keep(tenant="acme", body=body(name), conversation=[], input_items=[])
    later = utcnow() + timedelta(days=2)
    assert await store.forget_older_than(3, now=later) == 0
    assert await store.forget_older_than(1, now=later) == 2
    with pytest.raises(NotFound):
        await store.get("resp_new", tenant="acme")
