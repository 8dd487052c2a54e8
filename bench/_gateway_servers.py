"""The processes the gateway bench runs against: two fake upstreams, our API, the LiteLLM proxy.

:func:`start_servers` starts, each in its own process group (so the CPU each uses is its own):
the embedded NATS (outcome events) and, unless SQLite is asked for, the embedded PostgreSQL;
the fake model server twice, answering at once (``fast``) and after 60 ms (``slow``); our API
as one uvicorn process (``spine api``); the LiteLLM proxy as one process
(``litellm --config ... --num_workers 1``); and a bare pass-through to the fast upstream
(``_passthrough.py``, the floor of any Python gateway hop here). Both gateways know the two upstreams under the same
two model names. :meth:`Harness.close` stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import Child, Harness, create_tenant, free_port, migrate, say
from _report import ROOT

FAST, SLOW = "bench-fast", "bench-slow"
UPSTREAM_MODEL = "gpt-4o-mini"  # what both gateways ask the fake upstream for
# gpt-4o-mini's list prices per token: the calls cost something, so budgets are reserved.
INPUT_PRICE, OUTPUT_PRICE = "0.00000015", "0.0000006"
TENANT = "bench-gateway"
TENANT_BUDGET = "1000000"  # a daily budget far above what the run spends: reserved, never hit


@dataclass
class Servers:
    """Where everything answers, and the keys to call the two gateways with."""

    harness: Harness
    upstream: dict[str, str] = field(default_factory=dict)  # model name -> fake base URL
    api_url: str = ""
    api_key: str = ""
    proxy_url: str = ""
    proxy_key: str = ""
    passthrough_url: str = ""  # the floor: a bare forwarder to the fast upstream
    database_url: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    def child(self, name: str) -> Child:
        return next(c for c in self.harness.children if c.name == name)


def start_servers(
    tmp: Path,
    *,
    database: str,
    slow_ms: float,
    budget: bool,
    proxy_timeout: float,
    redis: bool = False,
) -> Servers:
    """Start every process and wait until each answers; on failure stop what started.

    ``redis``: the response cache in Redis, as ``spine up`` has it (the embedded FalkorDB's
    database 1, each process's near tier in front); without it, the in-process cache.
    """
    from spine.platform.embedded.stack import EmbeddedStack

    harness = Harness(tmp=tmp)
    servers = Servers(harness=harness)
    try:
        wanted = ["nats"] if database == "sqlite" else ["nats", "postgres"]
        if redis:
            wanted.append("redis")
        say(f"starting embedded {' and '.join(wanted)} ...")
        harness.stack = EmbeddedStack(tmp / "servers", wanted)
        harness.endpoints = harness.stack.start()
        servers.database_url = (
            f"sqlite:///{tmp / 'genai.db'}"
            if database == "sqlite"
            else harness.endpoints.database_url
        )
        for name, latency in ((FAST, 0.0), (SLOW, slow_ms)):
            servers.upstream[name] = spawn_fake(
                harness, f"fake-{name.removeprefix('bench-')}", latency
            )
        asyncio.run(migrate(servers.database_url))
        servers.api_key = asyncio.run(create_tenant(servers.database_url, TENANT)).key
        say("starting our API (one uvicorn process) and the LiteLLM proxy (one worker) ...")
        spawn_api(servers, budget=budget, redis_url=harness.endpoints.redis_url)
        spawn_proxy(servers)
        spawn_passthrough(servers)
        asyncio.run(wait_all_ready(servers, proxy_timeout))
    except BaseException:
        for child in list(harness.children):
            if not child.alive():
                print(f"--- {child.name} log tail ---\n{child.tail()}", file=sys.stderr)
        harness.close()
        raise
    servers.config = {
        "database": "sqlite" if database == "sqlite" else "embedded postgresql",
        "response_cache": "Redis (embedded FalkorDB, database 1), near tier 10 s"
        if redis
        else "in-process (GENAI_REDIS_URL unset)",
        "budget": f"tenant {TENANT}: {TENANT_BUDGET} USD/day (reserved and settled per call)"
        if budget
        else "none (no budget rows touched)",
        "model_prices_per_token": {"input": INPUT_PRICE, "output": OUTPUT_PRICE},
        "outcome_events": "JetStream OUTCOMES on the embedded NATS",
        "proxy": "litellm --config <file> --num_workers 1; master key, no database, "
        "num_retries 0, otherwise defaults",
    }
    return servers


def spawn_fake(harness: Harness, name: str, latency_ms: float) -> str:
    """Start the fake model server in its own process; return its base URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    # -P: the temporary working directory stays off sys.path.
    argv = [sys.executable, "-P", "-m", "support.fake_models", "--port", str(port)]
    harness.spawn(name, [*argv, "--latency-ms", str(latency_ms)], env=env)
    return f"http://127.0.0.1:{port}"


def spawn_api(servers: Servers, *, budget: bool, redis_url: str | None = None) -> None:
    """Start ``spine api`` with a models file naming the two upstreams."""
    harness = servers.harness
    models_file = harness.tmp / "models.yaml"
    models_file.write_text(
        "models:\n"
        + "".join(
            f"  - name: {name}\n"
            "    provider: openai-compatible\n"
            f"    model: {UPSTREAM_MODEL}\n"
            f"    api_base: {base}/v1\n"
            f'    input_price: "{INPUT_PRICE}"\n'
            f'    output_price: "{OUTPUT_PRICE}"\n'
            for name, base in servers.upstream.items()
        )
    )
    port = free_port()
    servers.api_url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENAI_")}
    env.update(
        GENAI_DATABASE_URL=servers.database_url,
        GENAI_NATS_URL=harness.endpoints.nats_url,
        GENAI_MODELS_FILE=str(models_file),
        GENAI_API__HOST="127.0.0.1",
        GENAI_API__PORT=str(port),
        GENAI_DATA_DIR=str(harness.tmp / "data"),
        GENAI_LOG_LEVEL="WARNING",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
    )
    if budget:
        env["GENAI_BUDGETS__TENANTS"] = f"{TENANT}={TENANT_BUDGET}"
    if redis_url is not None:
        env["GENAI_REDIS_URL"] = redis_url
    harness.env = env
    harness.spawn("api", [sys.executable, "-m", "spine.platform.app.cli", "api"])


def spawn_proxy(servers: Servers) -> None:
    """Start the LiteLLM proxy, one worker, the same two upstreams, a fixed master key."""
    harness = servers.harness
    servers.proxy_key = f"sk-bench-{secrets.token_hex(16)}"
    config = harness.tmp / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        + "".join(
            f"  - model_name: {name}\n"
            "    litellm_params:\n"
            f"      model: openai/{UPSTREAM_MODEL}\n"
            f"      api_base: {base}/v1\n"
            "      api_key: none\n"
            for name, base in servers.upstream.items()
        )
        + "litellm_settings:\n  num_retries: 0\n"
        + f"general_settings:\n  master_key: {servers.proxy_key}\n"
    )
    port = free_port()
    servers.proxy_url = f"http://127.0.0.1:{port}"
    litellm = Path(sys.executable).with_name("litellm")
    # No database: nothing of the operator's environment reaches it.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GENAI_", "LITELLM_", "DATABASE_", "REDIS_"))
    }
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    argv = [str(litellm), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    harness.spawn("proxy", [*argv, "--num_workers", "1"], env=env)


def spawn_passthrough(servers: Servers) -> None:
    """Start the bare pass-through to the fast upstream (``_passthrough.py``: the floor)."""
    port = free_port()
    servers.passthrough_url = f"http://127.0.0.1:{port}"
    script = Path(__file__).with_name("_passthrough.py")
    argv = [sys.executable, str(script), servers.upstream[FAST], str(port)]
    servers.harness.spawn("passthrough", argv)


async def wait_all_ready(servers: Servers, proxy_timeout: float) -> None:
    """Wait for both fakes, our API's ``/readyz`` and the proxy's liveliness probe."""
    checks = [(f"{url}/api/version", 30.0) for url in servers.upstream.values()]
    checks += [
        (f"{servers.api_url}/readyz", 90.0),
        (f"{servers.passthrough_url}/healthz", 30.0),
        (f"{servers.proxy_url}/health/liveliness", proxy_timeout),
    ]
    began = time.monotonic()
    await asyncio.gather(*(wait_http(servers.harness, url, timeout) for url, timeout in checks))
    say(f"  everything answers after {time.monotonic() - began:.1f} s")


async def wait_http(harness: Harness, url: str, timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail early when a child exited."""
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
        while True:
            for child in harness.children:
                if not child.alive():
                    raise RuntimeError(f"{child.name} exited early; its log ends:\n{child.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")
            await asyncio.sleep(0.25)
