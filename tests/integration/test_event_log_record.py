"""Recording events: whoever records a key first owns it, even at the same instant."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from spine.events.cloudevent import dedupe_id, parse_structured
from spine.events.log import EventLog, ReceivedEvent
from support.databases import migrated_database

pytestmark = pytest.mark.integration


def received(event_id: str) -> ReceivedEvent:
    event = parse_structured(
        {"specversion": "1.0", "id": event_id, "source": "/s", "type": "t.x", "spinetenant": "a"}
    )
    return ReceivedEvent(key=dedupe_id("a", "/s", event_id), tenant="a", event=event)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_one_of_many_recorders_of_a_new_key_gets_it(
    backend: str, tmp_path: Path, pg_url: str
) -> None:
    # A read before the insert once let two recorders of one new key both take it as theirs.
    async with migrated_database(backend, tmp_path, pg_url) as db:
        log = EventLog(db)
        for round_ in range(5):
            events = [received(f"e{round_}-{n}") for n in range(3)]
            owned = await asyncio.gather(*(log.record(events) for _ in range(6)))
            keys = [key for fresh in owned for key in fresh]
            assert sorted(keys) == sorted(e.key for e in events)  # each key exactly once
        assert await log.record([received("e0-0"), received("new")]) == {received("new").key}
