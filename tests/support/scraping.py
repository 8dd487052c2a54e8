"""Reading a ``/metrics`` page in tests: its samples, sums over labels, no ids in labels."""

from __future__ import annotations

import re

import httpx
from prometheus_client.parser import text_string_to_metric_families

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)

Samples = list[tuple[str, dict[str, str], float]]


async def scrape(url: str) -> Samples:
    """Return every sample ``url`` exposes."""
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(url)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    ]


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum the samples of ``name`` whose labels include ``labels``."""
    return sum(
        v for n, ls, v in samples if n == name and all(ls.get(k) == w for k, w in labels.items())
    )


def assert_no_ids(samples: Samples, *task_ids: str) -> None:
    """Fail if a label value carries a UUID or one of ``task_ids``."""
    for name, labels, _ in samples:
        for label, carried in labels.items():
            assert not _UUID.search(carried), f"{name}{{{label}={carried!r}}} carries an id"
            assert carried not in task_ids
