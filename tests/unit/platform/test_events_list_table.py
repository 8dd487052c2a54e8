"""``spine events list`` on an 80-column terminal: every column readable, keys by their start."""

from __future__ import annotations

import hashlib
import io
from typing import Any

from rich.console import Console

from spine.platform.app.cli.client import _events_table

KEY = hashlib.sha256(b"acme|billing|evt-1").hexdigest()
EVENT = {
    "key": KEY,
    "event_id": "3f1c2a4e-1b2c-4d5e-8f90-123456789abc",
    "type": "order.created",
    "status": "dead_lettered",
    "reason": "no mapping for type order.created",
    "received_at": "2026-12-04T04:44:17.400000+00:00",
}


def rendered(events: list[dict[str, Any]], *, width: int, wide: bool = False) -> str:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(_events_table(events, wide=wide))
    return out.getvalue()


def test_every_column_is_readable_at_80_columns() -> None:
    text = rendered([EVENT], width=80)

    assert max(len(line) for line in text.splitlines()) <= 80
    header = text.splitlines()[1]
    for name in ("key", "event_id", "type", "status", "reason", "received"):
        assert name in header, text
    assert "dead_lettered" in text  # the status never wraps or shrinks away
    assert KEY[:12] in text  # a start `spine events show` takes
    assert KEY not in text


def test_wide_shows_each_whole_key() -> None:
    text = rendered([EVENT], width=250, wide=True)

    assert KEY in text
    assert "dead_lettered" in text
    folded = "".join(
        line.split("│")[1].strip()
        for line in rendered([EVENT], width=80, wide=True).splitlines()
        if line.startswith("│")
    )
    assert folded.startswith(KEY)
