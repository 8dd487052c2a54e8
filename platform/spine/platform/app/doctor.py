"""``spine doctor``: check each backing service and the model provider, and say how to fix them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from sqlalchemy.exc import ProgrammingError

from spine.platform.db import Database
from spine.platform.errors import ProviderNotConfigured, SpineError
from spine.platform.learning.snapshots import SnapshotStore
from spine.platform.models import HOW_TO_CONFIGURE, resolve_provider
from spine.platform.router import TOY_NOTE
from spine.platform.schema import utcnow
from spine.platform.settings import Settings

__all__ = ["CheckResult", "run_checks"]

_TIMEOUT = 5.0


@dataclass(slots=True, kw_only=True)
class CheckResult:
    """The outcome of one check."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


async def run_checks(settings: Settings) -> list[CheckResult]:
    """Run every check concurrently; none raises."""
    checks: list[tuple[str, str, Callable[[Settings], Awaitable[str]]]] = [
        ("database", "set GENAI_DATABASE_URL, or run `spine up` to start PostgreSQL", _database),
        ("nats", "set GENAI_NATS_URL, or run `spine up` to start nats-server", _nats),
        (
            "graph",
            "set GENAI_FALKORDB_URL (redis://...) or GENAI_NEO4J_URI (bolt://...), or run "
            "`spine up` to start FalkorDB",
            _graph,
        ),
        ("redis", "set GENAI_REDIS_URL, or run `spine up` to start FalkorDB", _redis),
        ("model provider", HOW_TO_CONFIGURE, _provider),
        (
            "learning",
            "run the learning consumer (`spine learner`; `spine up` starts it) so that the "
            "learned strategy has weights",
            _learning,
        ),
    ]
    return list(await asyncio.gather(*(_run(n, fix, c, settings) for n, fix, c in checks)))


async def _run(
    name: str, fix: str, check: Callable[[Settings], Awaitable[str]], settings: Settings
) -> CheckResult:
    try:
        detail = await asyncio.wait_for(check(settings), _TIMEOUT * 2)
    except ProviderNotConfigured as exc:
        return CheckResult(name=name, ok=False, detail=exc.message, fix=fix)
    except SpineError as exc:
        return CheckResult(name=name, ok=False, detail=exc.message, fix=fix)
    except TimeoutError:
        return CheckResult(name=name, ok=False, detail="no answer within 10 s", fix=fix)
    except Exception as exc:
        return CheckResult(name=name, ok=False, detail=f"{type(exc).__name__}: {exc}", fix=fix)
    return CheckResult(name=name, ok=True, detail=detail)


class _NotSet(SpineError):
    error_type = "not_configured"


def _url(value: str | None, variable: str) -> str:
    if value is None:
        raise _NotSet(f"{variable} is not set and no embedded server is running")
    return value


async def _database(settings: Settings) -> str:
    db = Database(_url(settings.database_url, "GENAI_DATABASE_URL"))
    try:
        await db.ping()
    finally:
        await db.dispose()
    return f"{db.url.get_backend_name()} answers ({db.url.render_as_string(hide_password=True)})"


async def _learning(settings: Settings) -> str:
    """Say which version of the routing weights routers use, and how old it is.

    Routing goes on with the weights it has while the learner is away, so an old version is
    reported, not failed; no version at all fails only when ``learned`` is the strategy.
    """
    db = Database(_url(settings.database_url, "GENAI_DATABASE_URL"))
    try:
        latest = await SnapshotStore(db).latest()
    except ProgrammingError:  # not migrated yet: the API migrates at its start
        return "no learning tables yet (`spine migrate`, or start the API, creates them)"
    finally:
        await db.dispose()
    learned = settings.routing_strategy == "learned" or "learned" in set(
        settings.tenant_strategies.values()
    )
    if latest is None:
        if learned:
            raise _NotSet("no routing weights yet: the learned strategy routes by its cold start")
        return "no routing weights yet (the learned strategy is not in use)"
    age = (utcnow() - latest.created_at).total_seconds()
    return f"weights version {latest.version} from {latest.events} events, {age:.0f} s old"


async def _nats(settings: Settings) -> str:
    import nats

    from spine.events.bus import server_list

    url = _url(settings.nats_url, "GENAI_NATS_URL")
    servers = server_list(url)
    shown = ",".join(server.rpartition("@")[2] for server in servers)  # never its credentials
    nc = await nats.connect(
        servers, connect_timeout=_TIMEOUT, max_reconnect_attempts=0, allow_reconnect=False
    )
    try:
        info = await nc.jetstream().account_info()
    except Exception as exc:
        raise _NotSet(
            f"NATS at {shown} answers but JetStream does not (start it with -js): {exc!r}"
        ) from exc
    finally:
        await nc.close()
    return f"JetStream at {shown}, {info.streams} streams"


async def _graph(settings: Settings) -> str:
    from spine.graph import describe_graph, open_store  # the graph layer sits above the kernel

    store = open_store(settings)
    if store is None:
        raise _NotSet("GENAI_FALKORDB_URL and GENAI_NEO4J_URI are not set")
    try:
        await store.read("RETURN 1 AS one", {}, timeout=_TIMEOUT)
    finally:
        await store.close()
    return f"{describe_graph(settings)} runs Cypher"


async def _redis(settings: Settings) -> str:
    import redis.asyncio as redis

    url = _url(settings.redis_url, "GENAI_REDIS_URL")
    client = redis.from_url(url, socket_timeout=_TIMEOUT)
    try:
        await client.ping()
    finally:
        await client.aclose()
    return f"Redis at {url.rpartition('@')[2]} answers PING"  # never its password


async def _provider(settings: Settings) -> str:
    target = resolve_provider(settings)
    if target.provider == "ollama":
        base = str(target.kwargs["api_base"]).rstrip("/")
        async with httpx.AsyncClient(timeout=_TIMEOUT) as client:
            try:
                response = await client.get(f"{base}/api/tags")
                response.raise_for_status()
            except httpx.HTTPError as exc:
                raise _NotSet(
                    f"Ollama at {base} does not answer ({exc!r}); check GENAI_OLLAMA_URL"
                ) from exc
        names = [m.get("name", "") for m in response.json().get("models", [])]
        if not any(n.split(":")[0] == target.model.split(":")[0] for n in names):
            raise _NotSet(
                f"Ollama at {base} has no model {target.model!r} (has: "
                f"{', '.join(names) or 'none'}); run `ollama pull {target.model}` or "
                "set GENAI_MODELS__OLLAMA"
            )
        return f"Ollama at {base} serves {target.model}"
    if target.provider == "local":
        return await _local_model(str(target.kwargs["api_base"]), target.model)
    return f"{target.provider} configured with model {target.model} (key not verified offline)"


async def _local_model(base: str, model: str) -> str:
    base = base.rstrip("/")
    async with httpx.AsyncClient(timeout=_TIMEOUT) as client:
        try:
            response = await client.get(f"{base}/models")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise _NotSet(
                f"the local model at {base} does not answer ({exc!r}); run `spine up`, or check "
                "GENAI_LOCAL_MODEL__URL"
            ) from exc
    names = [m.get("id", "") for m in response.json().get("data", [])]
    if model not in names:
        raise _NotSet(
            f"the local model server at {base} serves {', '.join(names) or 'nothing'}, not "
            f"{model!r}; set GENAI_MODELS__LOCAL"
        )
    return f"local model {model} at {base} answers; {TOY_NOTE}"
