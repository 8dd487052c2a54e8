"""Paths into an event, as mappings and triggers name values: ``data.person.id``, ``subject``.

The first part is ``data`` or an attribute of the envelope (``id``, ``source``, ``type``,
``subject``, ``time``, or an extension); the rest walk objects by key and lists by index
(``data.lines.0.sku``).
"""

from __future__ import annotations

import re
from typing import Any, Final

from spine.events.cloudevent import CloudEvent

__all__ = ["MISSING", "PATH", "resolve", "valid_path"]


class _Missing:
    """The value of a path that leads nowhere."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()
PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_-]+)*$")


def valid_path(path: str) -> bool:
    """Tell whether ``path`` is written as a path."""
    return bool(PATH.match(path))


def resolve(event: CloudEvent, path: str) -> Any:
    """Return the value at ``path`` in the event, or :data:`MISSING`."""
    head, _, rest = path.partition(".")
    value: Any = event.data if head == "data" else event.attribute(head)
    if head == "time" and value is not None:
        value = value.isoformat()
    if value is None:
        return MISSING
    for part in rest.split(".") if rest else ():
        if isinstance(value, dict):
            if part not in value:
                return MISSING
            value = value[part]
        elif isinstance(value, list) and part.isdigit():
            index = int(part)
            if index >= len(value):
                return MISSING
            value = value[index]
        else:
            return MISSING
        if value is None:
            return MISSING
    return value
