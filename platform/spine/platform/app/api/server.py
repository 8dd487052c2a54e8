"""The HTTP API: an ASGI app built around one :class:`Platform`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from spine.platform.app.api import (
    admin,
    agents,
    audit,
    batches,
    budgets,
    documents,
    embeddings,
    events,
    files,
    graph,
    key_limits,
    learning,
    metrics,
    responses,
    tasks,
    tools,
    usage,
)
from spine.platform.app.api._openai import OPENAI_PATHS
from spine.platform.app.api.auth import platform_of
from spine.platform.app.api.errors import (
    BodySizeLimit,
    UnexpectedErrors,
    document_errors,
    install_error_handlers,
)
from spine.platform.app.api.gateway import router as gateway_router
from spine.platform.app.api.hot_routes import FastHandler, serve_directly
from spine.platform.app.api.input_guard import InputGuard
from spine.platform.app.api.metrics import HttpMetrics
from spine.platform.app.console.site import install as install_console
from spine.platform.app.knowledge import RESEND_EVERY
from spine.platform.app.observed import api_probes
from spine.platform.app.wiring import Platform
from spine.platform.limits import RateLimits
from spine.platform.periodic import run_every
from spine.platform.settings import Settings
from spine.platform.telemetry import configure as configure_metrics
from spine.platform.telemetry import http_telemetry

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

RESPONSES_SWEEP_EVERY = 3600.0
"""Seconds between two sweeps of the Responses API's kept answers past their retention."""
RESPONSES_FIRST_SWEEP = 60.0
"""Seconds after start-up before the first such sweep."""


def create_app(settings: Settings) -> FastAPI:
    """Build the API app; services connect when the app starts."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        platform = Platform.build(settings, name="spine-api")
        await platform.start()
        platform.start_router_warm_up()
        app.state.platform = platform
        app.state.rate_limits = RateLimits.build(settings, platform.db)
        if settings.metrics.enabled:
            probes = configure_metrics(settings.metrics, role="api")
            app.state.metric_probes = api_probes(platform, settings, probes)
        stop = asyncio.Event()
        background = [
            asyncio.create_task(platform.ensure_streams_when_connected(), name="streams"),
            asyncio.create_task(platform.dispatcher.run_sweeper(stop), name="sweeper"),
            asyncio.create_task(
                run_every(
                    platform.batches.sweep_once,
                    interval=settings.api.sweep_interval,
                    stop=stop,
                    name="batch sweep",
                ),
                name="batch-sweeper",
            ),
            asyncio.create_task(platform.indexer.run_sweeper(stop), name="document-sweeper"),
            asyncio.create_task(platform.follow_weights(stop), name="weights"),
            asyncio.create_task(platform.keep_budget_holds(stop), name="budget-holds"),
            asyncio.create_task(
                run_every(
                    platform.knowledge.resend_pending_events,
                    interval=RESEND_EVERY,
                    stop=stop,
                    name="pending events sweep",
                ),
                name="events-sweeper",
            ),
            asyncio.create_task(
                run_every(
                    functools.partial(
                        platform.responses.forget_older_than,
                        settings.api.response_retention_days,
                    ),
                    interval=RESPONSES_SWEEP_EVERY,
                    stop=stop,
                    name="kept responses sweep",
                    # Not in the start-up's burst: it would hold a database connection more.
                    first_after=RESPONSES_FIRST_SWEEP,
                ),
                name="responses-sweeper",
            ),
            asyncio.create_task(
                run_every(
                    platform.feedback_announcer.sweep_once,
                    interval=settings.api.sweep_interval,
                    stop=stop,
                    name="feedback sweep",
                ),
                name="feedback-sweeper",
            ),
        ]
        try:
            yield
        finally:
            stop.set()
            for job in background:
                job.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await app.state.rate_limits.close()
            await platform.close()

    # Server spans (FastAPI's own) when this process traces: set tracing up before this.
    app = FastAPI(
        title="GenAI Spine", version="0.1.0", lifespan=lifespan, telemetry=http_telemetry()
    )
    install_error_handlers(app)
    # Batch files are larger than any other body (multipart framing adds a little).
    upload = settings.batches.max_file_bytes
    # A document's text may grow in JSON (escapes); its own limit is checked on the text.
    document = max(settings.api.max_body_bytes, 2 * settings.documents.max_bytes + 64 * 1024)
    # Added innermost first: errors outside, then sizes, then what the values may hold.
    app.add_middleware(InputGuard, max_depth=settings.api.max_json_depth, openai_paths=OPENAI_PATHS)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.api.max_body_bytes,
        overrides={
            "/v1/files": upload + 64 * 1024,
            "/v1/batches": upload,
            "/v1/documents": document,
        },
    )
    app.add_middleware(UnexpectedErrors)
    if settings.metrics.enabled:  # outermost: it sees every answer, the refusals too
        app.add_middleware(HttpMetrics)
        app.include_router(metrics.router)
    app.include_router(tasks.router)
    app.include_router(gateway_router)
    app.include_router(responses.router)
    app.include_router(embeddings.router)
    app.include_router(documents.router)
    app.include_router(usage.router)
    app.include_router(files.router)
    app.include_router(batches.router)
    app.include_router(tools.router)
    app.include_router(agents.router)
    app.include_router(events.router)
    app.include_router(graph.router)
    app.include_router(admin.router)
    app.include_router(budgets.router)
    app.include_router(key_limits.router)
    app.include_router(audit.router)
    document_errors(app, openai_paths=OPENAI_PATHS)
    app.include_router(learning.router)
    # After FastAPI's routes, ahead of them.
    fast: dict[tuple[str, str], FastHandler] = {("/v1/tasks", "POST"): tasks.submit_task_fast}
    serve_directly(app, gateway_router, embeddings.router, tasks.router, fast=fast)
    if settings.api.console:  # the web console at /ui
        install_console(app)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Answer while the process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        """Answer 200 when every backing service answers, 503 naming the ones that don't.

        Under ``spine up``, ``supervisor`` names each child (server, API, worker) that is down,
        restarting or crash-looping; any of them makes the answer 503 too.
        """
        platform = platform_of(request)
        # The supervisor's view before and after the checks (they may take their 2 s): a child
        # down at either moment is named, so a quick restart is not missed between two views.
        before = platform.supervision()
        status = await platform.ready()
        after = platform.supervision()
        children = None if before is None and after is None else {**(before or {}), **(after or {})}
        ok = all(value == "ok" for value in status.values()) and not children
        body: dict[str, object] = {"status": "ok" if ok else "degraded", "services": status}
        if children is not None:
            body["supervisor"] = children
        # Informational: routing goes on with the weights it has while the learner is away.
        body["learning"] = platform.learning_state()
        return JSONResponse(body, status_code=200 if ok else 503)

    return app
