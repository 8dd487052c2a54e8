"""Bearer-key authentication for every ``/v1`` route."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from spine.platform.app.wiring import Platform
from spine.platform.errors import Unauthorized
from spine.platform.keys import Principal
from spine.platform.limits import RateLimits

__all__ = ["Caller", "authenticate", "platform_of", "rate_limits_of"]


def platform_of(request: Request) -> Platform:
    """Return the wired services of this app."""
    platform: Platform = request.app.state.platform
    return platform


def rate_limits_of(request: Request) -> RateLimits:
    """Return this app's rate limits (built with the platform when the app starts)."""
    limits: RateLimits = request.app.state.rate_limits
    return limits


async def authenticate(request: Request) -> Principal:
    """Resolve the ``Authorization: Bearer`` key to its tenant, or answer 401."""
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized(
            "missing API key: send 'Authorization: Bearer <key>'", field="Authorization"
        )
    return await platform_of(request).keys.verify(presented.strip())


Caller = Annotated[Principal, Depends(authenticate)]
