"""The cost of a ``learned`` routing decision on a gateway call, beside ``local_first``.

Weights that favour the fast upstream are stored as the learner would (a snapshot in
PostgreSQL, its version announced on the NATS KV bucket); once our API has loaded them, the
same routed call (``model: auto``) is timed with each strategy, interleaved. Both route to the
fast upstream (the answers' ``X-Spine-Model`` is checked), so the difference is the decision:
the request's features and the Thompson draw.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from _gateway_load import Endpoint, interleaved, post_call
from _gateway_servers import FAST, SLOW, Servers
from _harness import say
from spine.events.bus import NatsBus
from spine.events.weights import WeightsChannel
from spine.platform.db import Database
from spine.platform.learning.snapshots import SnapshotStore
from spine.platform.learning.weights import Observation, RoutingWeights

LOCAL_FIRST, LEARNED = "local_first", "learned"


async def publish_weights(servers: Servers) -> None:
    """Store and announce weights in which the fast model is good and the slow one is not."""
    weights = RoutingWeights()
    for n in range(60):
        features = weights.space.extract(f"question {n} about the weather", tenant=None)
        weights.observe(Observation(model=FAST, features=features, quality=1.0, latency_ms=2))
        weights.observe(Observation(model=SLOW, features=features, quality=0.0, latency_ms=60))
    db = Database(servers.database_url)
    try:
        await SnapshotStore(db).save(version=1, state=weights.to_dict(), events=120, applied=[])
    finally:
        await db.dispose()
    bus = NatsBus(servers.harness.endpoints.nats_url, name="bench-weights")
    try:
        await WeightsChannel(bus).announce(1)
    finally:
        await bus.close()


async def learned_phase(client: httpx.AsyncClient, servers: Servers, calls: int) -> dict[str, Any]:
    """Time routed calls with each strategy once the API routes ``learned`` by real weights."""
    await publish_weights(servers)
    deadline = time.monotonic() + 30
    while True:
        ready = (await client.get(f"{servers.api_url}/readyz")).json()
        if (ready.get("learning") or {}).get("weights_version") == 1:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API did not load the weights: {ready.get('learning')}")
        await asyncio.sleep(0.2)
    chosen: dict[str, set[str]] = {LOCAL_FIRST: set(), LEARNED: set()}

    def routed(strategy: str) -> Any:
        endpoint = Endpoint(
            name=strategy,
            url=f"{servers.api_url}/v1/chat/completions",
            model="auto",
            headers={"Authorization": f"Bearer {servers.api_key}", "X-Spine-Strategy": strategy},
        )
        call = post_call(client, endpoint)

        async def timed() -> None:
            await call()

        return timed

    say(f"learned vs local_first: {calls} routed calls each, interleaved ...")
    figures = await interleaved({s: routed(s) for s in (LOCAL_FIRST, LEARNED)}, calls, 10)
    for strategy in chosen:
        answer = await client.post(
            f"{servers.api_url}/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": f"which {strategy}"}]},
            headers={"Authorization": f"Bearer {servers.api_key}", "X-Spine-Strategy": strategy},
        )
        chosen[strategy].add(answer.headers.get("x-spine-model", "?"))
    added = figures[LEARNED]["p50_ms"] - figures[LOCAL_FIRST]["p50_ms"]
    return {
        "calls": figures,
        "learned_added_p50_ms": round(added, 3),
        "models": {s: sorted(m) for s, m in chosen.items()},
    }
