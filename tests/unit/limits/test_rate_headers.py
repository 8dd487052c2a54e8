"""OpenAI's x-ratelimit-* headers: Go durations, the tightest window, Retry-After."""

from __future__ import annotations

import math
import re

from hypothesis import given
from hypothesis import strategies as st

from spine.platform.limits import Window, go_duration, rate_headers, retry_after

_GO = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d{1,3})?)s)?$|^(\d+)ms$")


def _seconds(text: str) -> float:
    """Read a Go duration back (the forms go_duration writes)."""
    match = _GO.match(text)
    assert match is not None, text
    hours, minutes, seconds, millis = match.groups()
    if millis is not None:
        return int(millis) / 1000
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


def test_durations_read_as_openai_writes_them() -> None:
    assert go_duration(0) == "0s"
    assert go_duration(-3) == "0s"
    assert go_duration(0.02) == "20ms"
    assert go_duration(1) == "1s"
    assert go_duration(2.5) == "2.5s"
    assert go_duration(360) == "6m0s"
    assert go_duration(90.25) == "1m30.25s"
    assert go_duration(3723) == "1h2m3s"
    assert go_duration(math.inf) == "0s"


@given(st.floats(min_value=0.001, max_value=10 * 86400, allow_nan=False))
def test_a_duration_reads_back_as_itself_to_the_millisecond(seconds: float) -> None:
    text = go_duration(seconds)
    assert abs(_seconds(text) - seconds) <= 0.001 + 1e-9
    assert _seconds(text) >= seconds - 1e-6  # rounded up: a client never retries too early


@given(st.floats(min_value=-10, max_value=10 * 86400, allow_nan=False))
def test_retry_after_is_whole_seconds_never_below_one_nor_before_the_reset(seconds: float) -> None:
    value = int(retry_after(seconds))
    assert value >= 1
    assert value >= seconds


windows = st.builds(
    Window,
    measure=st.sampled_from(["requests", "tokens"]),
    scope=st.sampled_from(["key:k1", "tenant:acme"]),
    limit=st.integers(min_value=1, max_value=10**7),
    remaining=st.integers(min_value=0, max_value=10**7),
    reset_in=st.floats(min_value=0, max_value=120, allow_nan=False),
)


@given(st.lists(windows, max_size=4))
def test_headers_describe_the_window_with_least_left_of_each_measure(
    given_windows: list[Window],
) -> None:
    headers = rate_headers(given_windows)
    for measure in ("requests", "tokens"):
        mine = [w for w in given_windows if w.measure == measure]
        names = {f"x-ratelimit-{part}-{measure}" for part in ("limit", "remaining", "reset")}
        if not mine:
            assert not names & set(headers)
            continue
        least = min(w.remaining for w in mine)
        assert int(headers[f"x-ratelimit-remaining-{measure}"]) == least
        shown = [
            w
            for w in mine
            if w.remaining == least and str(w.limit) == headers[f"x-ratelimit-limit-{measure}"]
        ]
        assert shown, headers
        assert headers[f"x-ratelimit-reset-{measure}"] in {go_duration(w.reset_in) for w in shown}
