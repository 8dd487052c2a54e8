"""Bodies of ``POST /v1/experiments`` for tests: a scope (the gateway's by default) and arms."""

from __future__ import annotations

from typing import Any


def arm(name: str, share: float, **route: Any) -> dict[str, Any]:
    """One arm: its share of the scope's calls and its route (``model``, ``models`` or
    ``strategy``)."""
    return {"name": name, "share": share, **route}


def experiment_body(
    name: str, *arms: dict[str, Any], scope: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An experiment over ``scope`` (default: the gateway's calls) with ``arms``."""
    return {"name": name, "scope": scope or {"kind": "gateway"}, "arms": list(arms)}
