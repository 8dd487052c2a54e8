"""The one cursor codec of the API: an opaque token for keyset pagination.

A page ordered by ``(time, id)`` descending continues after the last row it returned; the
cursor carries that row's time and id as base64url JSON. Clients treat it as opaque. A cursor
that does not decode, or carries a naive time (ours always carry an offset, and a naive time
cannot be compared with stored ones), is a :class:`~spine.platform.errors.BadRequest` naming
the ``cursor`` parameter.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from spine.platform.errors import BadRequest
from spine.platform.inputs import moment_problem, text_problem

__all__ = ["decode_cursor", "encode_cursor"]


def encode_cursor(when: datetime, last_id: str) -> str:
    """Return the cursor that continues a listing after the row ``(when, last_id)``."""
    raw = json.dumps([when.isoformat(), last_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Return the ``(time, id)`` of the row a cursor continues after.

    Raises:
        BadRequest: The cursor is not one this API gave out.
    """
    try:
        when, last_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        position = datetime.fromisoformat(when)
    except (ValueError, TypeError, UnicodeError, binascii.Error, RecursionError) as exc:
        raise BadRequest("invalid cursor", field="cursor") from exc
    if (
        position.tzinfo is None
        or not isinstance(last_id, str)
        or text_problem(last_id)
        or moment_problem(position)
    ):
        raise BadRequest("invalid cursor", field="cursor")
    return position, last_id
