"""OpenAI's rate-limit headers: what a window allows, what is left, and when it frees up.

OpenAI answers every call with ``x-ratelimit-limit-requests``, ``x-ratelimit-remaining-requests``
and ``x-ratelimit-reset-requests`` (and the same for ``-tokens``); the reset is a Go duration
(``1s``, ``6m0s``, ``20ms``). Clients and SDKs read them to pace themselves, so the gateway sends
them in the same form. Where a key and its tenant both limit a measure, the headers describe
the scope with the least left (the one that will refuse first).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Measure", "Window", "go_duration", "rate_headers", "retry_after"]

Measure = Literal["requests", "tokens"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """Where one scope's limit of one measure stands in its minute.

    Attributes:
        measure: ``requests`` or ``tokens``.
        scope: ``key:<id>`` or ``tenant:<name>``.
        limit: What the window allows.
        remaining: What is left of it now (never below 0).
        reset_in: Seconds until it is full again (requests: until the next one frees up).
    """

    measure: Measure
    scope: str
    limit: int
    remaining: int
    reset_in: float


def rate_headers(windows: Iterable[Window]) -> dict[str, str]:
    """Render the ``x-ratelimit-*`` headers of the tightest window of each measure."""
    tightest: dict[Measure, Window] = {}
    for window in windows:
        held = tightest.get(window.measure)
        if held is None or (window.remaining, -window.reset_in) < (held.remaining, -held.reset_in):
            tightest[window.measure] = window
    headers: dict[str, str] = {}
    for measure, window in sorted(tightest.items()):
        headers[f"x-ratelimit-limit-{measure}"] = str(window.limit)
        headers[f"x-ratelimit-remaining-{measure}"] = str(max(window.remaining, 0))
        headers[f"x-ratelimit-reset-{measure}"] = go_duration(window.reset_in)
    return headers


def retry_after(seconds: float) -> str:
    """Render ``Retry-After``: whole seconds, rounded up, at least 1."""
    if not math.isfinite(seconds):
        return "60"
    return str(max(math.ceil(seconds), 1))


def go_duration(seconds: float) -> str:
    """Render a duration as Go does (OpenAI's reset headers): ``0s``, ``20ms``, ``1m30.5s``.

    Milliseconds are the finest unit; negative or unknown durations read ``0s``.
    """
    if not math.isfinite(seconds) or seconds <= 0:
        return "0s"
    millis = math.ceil(seconds * 1000 - 1e-6)
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, fraction = divmod(rest, 1000)
    second = f"{whole}.{fraction:03d}".rstrip("0").rstrip(".") if fraction else str(whole)
    if hours:
        return f"{hours}h{minutes}m{second}s"
    if minutes:
        return f"{minutes}m{second}s"
    return f"{second}s"
