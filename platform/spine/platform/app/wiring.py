"""The composition root: builds every long-lived object of a process from the settings.

Only the API app and the CLI import this module; nothing below them does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field

from spine.agents.base import ModelSource
from spine.agents.catalog import AgentCatalog, default_catalog
from spine.agents.delegation import submit_task_tool
from spine.agents.dispatch import TaskDispatcher
from spine.agents.embedding import DocumentIndexer, EmbedDocumentAgent
from spine.agents.worker import TaskWorker
from spine.events.budget_alerts import BudgetAlertPublisher
from spine.events.bus import NatsBus
from spine.events.feedback import FeedbackAnnouncer
from spine.events.outcomes import OutcomePublisher
from spine.events.progress import ProgressFeed, ProgressNudges
from spine.events.streams import StreamLayout, StreamWatch
from spine.events.weights import WeightsChannel
from spine.graph.explore import GraphExplorer
from spine.graph.hybrid import HybridRetriever
from spine.platform.app.knowledge import READY_TIMEOUT, KnowledgeLayer
from spine.platform.app.streams import stream_layout
from spine.platform.batches.files import FileStore
from spine.platform.batches.store import Batches
from spine.platform.db import Database
from spine.platform.documents.store import DocumentStore
from spine.platform.embedded.supervisor import SupervisionReader
from spine.platform.errors import ConfigurationError, ServiceUnavailable
from spine.platform.keys import KeyStore
from spine.platform.learning.experiments import ExperimentBook
from spine.platform.learning.feedback import FeedbackStore
from spine.platform.learning.snapshots import SnapshotStore
from spine.platform.learning.weights import RoutingWeights
from spine.platform.limits import RunningTaskLimits
from spine.platform.metering import MeteredModels
from spine.platform.metering.budgets import HOLD_BEAT_SECONDS, BudgetLedger, BudgetLimits
from spine.platform.metering.cache import response_cache
from spine.platform.metering.usage import UsageLedger
from spine.platform.periodic import run_every, unless_stopped
from spine.platform.responses import ResponseStore
from spine.platform.router import ModelRouter
from spine.platform.settings import Settings
from spine.platform.tasks import StepJournal, TaskStore
from spine.tools.builtin import VectorSearcher, builtin_tools
from spine.tools.builtin.graph import graph_tools
from spine.tools.builtin.hybrid_search import hybrid_search_tool
from spine.tools.policy import ToolPolicy
from spine.tools.registry import ToolRegistry

__all__ = ["Platform", "tool_registry"]

logger = logging.getLogger(__name__)


@dataclass(slots=True, kw_only=True)
class Platform:
    """The services one process uses, wired together."""

    settings: Settings
    db: Database
    tasks: TaskStore
    keys: KeyStore
    bus: NatsBus
    feed: ProgressFeed
    catalog: AgentCatalog
    layout: StreamLayout
    dispatcher: TaskDispatcher
    router: ModelRouter
    metered: MeteredModels
    documents: DocumentStore
    indexer: DocumentIndexer
    outcomes: OutcomePublisher
    journal: StepJournal
    tools: ToolRegistry
    files: FileStore
    batches: Batches
    responses: ResponseStore
    knowledge: KnowledgeLayer
    feedback: FeedbackStore
    snapshots: SnapshotStore
    experiments: ExperimentBook
    feedback_announcer: FeedbackAnnouncer
    _warming: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _supervision: SupervisionReader | None = field(default=None, init=False, repr=False)
    _resources: contextlib.AsyncExitStack = field(
        default_factory=contextlib.AsyncExitStack, init=False, repr=False
    )

    @classmethod
    def build(cls, settings: Settings, *, name: str) -> Platform:
        """Wire the services; nothing connects until :meth:`start`."""
        if settings.database_url is None or settings.nats_url is None:
            raise ConfigurationError(
                "GENAI_DATABASE_URL and GENAI_NATS_URL must be set (`spine up` sets them for "
                "the servers it starts)",
                field="GENAI_DATABASE_URL" if settings.database_url is None else "GENAI_NATS_URL",
            )
        db = Database(settings.database_url, timeout=settings.database_timeout)
        bus = NatsBus(settings.nats_url, name=name)
        tasks = TaskStore(db, announce=ProgressNudges(bus))
        feed = ProgressFeed(tasks, bus)
        catalog = default_catalog(settings.agents_dir)
        layout = stream_layout(settings)
        dispatcher = TaskDispatcher(
            store=tasks,
            bus=bus,
            catalog=catalog,
            settings=settings.api,
            watch=StreamWatch(layout),
        )
        router = ModelRouter(settings)
        knowledge = KnowledgeLayer.build(settings, db=db, bus=bus)
        outcomes = OutcomePublisher(
            bus,
            max_queued=settings.streams.outcomes_queue,
            retry_for=settings.streams.outcomes_retry,
        )
        experiments = ExperimentBook(db)
        metered = MeteredModels(
            router,
            budgets=BudgetLedger(
                db,
                BudgetLimits.from_settings(settings),
                stored_seconds=settings.budgets.stored_seconds,
                on_alert=BudgetAlertPublisher(bus),
                leases=settings.budgets.leases,
            ),
            usage=UsageLedger(db),
            cache=response_cache(settings),
            outcomes=outcomes,
            experiments=experiments,
        )
        documents = DocumentStore(db, settings=settings.documents, calls=metered)
        catalog.add(EmbedDocumentAgent(documents))
        indexer = DocumentIndexer(
            store=documents,
            dispatcher=dispatcher,
            settings=settings.documents,
            interval=settings.api.sweep_interval,
        )
        tools = tool_registry(
            settings,
            catalog,
            bus=bus,
            store=tasks,
            dispatcher=dispatcher,
            # Vectors need PostgreSQL: on SQLite the tool would only ever say so.
            searcher=None if db.is_sqlite else documents,
            graph=knowledge.explorer,
        )
        files = FileStore(db, limits=settings.batches)
        feedback = FeedbackStore(db)
        batches = Batches(
            db, tasks=tasks, files=files, dispatcher=dispatcher, limits=settings.batches
        )
        return cls(
            settings=settings,
            db=db,
            tasks=tasks,
            keys=KeyStore(db, cache_seconds=settings.api.key_cache_seconds),
            bus=bus,
            feed=feed,
            catalog=catalog,
            layout=layout,
            dispatcher=dispatcher,
            router=router,
            metered=metered,
            documents=documents,
            indexer=indexer,
            outcomes=outcomes,
            files=files,
            responses=ResponseStore(db),
            batches=batches,
            journal=StepJournal(db, announce=ProgressNudges(bus)),
            tools=tools,
            knowledge=knowledge,
            feedback=feedback,
            snapshots=SnapshotStore(db),
            experiments=experiments,
            feedback_announcer=FeedbackAnnouncer(bus, feedback),
        )

    async def start(self) -> None:
        """Migrate the database, begin connecting to NATS (which may still be down), and
        connect the configured MCP servers, whose tools join the registry."""
        await self.db.migrate()
        self.bus.start()
        if self.settings.tools.mcp_servers:
            from spine.tools.mcp_servers import McpServers  # `import mcp` takes ~2 s

            servers = McpServers(self.settings.tools.mcp_servers, self.tools)
            await self._resources.enter_async_context(servers)

    async def ensure_streams_when_connected(self) -> None:
        """Create the streams once NATS answers; runs in the background of the API."""
        await self.layout.ensure_when_ready(self.bus)

    def start_router_warm_up(self) -> None:
        """Warm the model router up in the background (Ollama discovery, LiteLLM's facts)."""
        if self._warming is None:
            self._warming = asyncio.create_task(self.router.warm_up(), name="router-warm-up")

    async def warm_router(self) -> ModelRouter:
        """Return the model router once it is warm; the first caller may wait for it."""
        self.start_router_warm_up()
        assert self._warming is not None
        await asyncio.shield(self._warming)
        return self.router

    async def metered_models(self) -> MeteredModels:
        """Return the metered model calls once the router is warm (see :meth:`warm_router`)."""
        await self.warm_router()
        return self.metered

    def worker(self, *, models: ModelSource | None = None) -> TaskWorker:
        """Build a worker on these services; its agents call models through :attr:`metered`."""
        return TaskWorker(
            store=self.tasks,
            bus=self.bus,
            catalog=self.catalog,
            models=models or self.metered,
            journal=self.journal,
            tools=self.tools,
            settings=self.settings.worker,
            layout=self.layout,
            signals=self.outcomes.signal,
            running=RunningTaskLimits(self.settings.limits),
        )

    async def run_event_consumers(self, stop: asyncio.Event) -> None:
        """Run graph ingestion and triggers (the EVENTS consumers) until ``stop`` is set."""
        await self.knowledge.run_consumers(
            stop, dispatcher=self.dispatcher, layout=self.layout, catalog=self.catalog
        )

    async def ready(self) -> dict[str, str]:
        """Check each backing service this process uses."""
        # Each answers within READY_TIMEOUT, all at once: a frozen server is not ready.
        status: dict[str, str] = {}

        async def check(name: str, probe: Awaitable[None]) -> None:
            try:
                await probe
                status[name] = "ok"
            except ServiceUnavailable as exc:
                status[name] = exc.message

        graph = asyncio.ensure_future(self.knowledge.ready())
        await asyncio.gather(
            check("nats", self.bus.ping(READY_TIMEOUT)),
            check("database", self.db.ping(READY_TIMEOUT)),
        )
        status.update(await graph)
        return {name: status[name] for name in ("nats", "database", *sorted(status))}

    async def keep_budget_holds(self, stop: asyncio.Event) -> None:
        """Beat as a holder of budget reservations and give back dead processes' holds,
        until ``stop`` (see :meth:`BudgetLedger.keep_holds`).

        It starts with this process's first hold: a process that never reserves (an idle
        stack) keeps no connection busy for it; dead processes' holds are also given back
        before any refusal.
        """
        holds = self.metered.budgets.holds
        if await unless_stopped(holds.holding.wait(), stop) is None:
            return
        await run_every(
            self.metered.budgets.keep_holds,
            interval=HOLD_BEAT_SECONDS,
            stop=stop,
            name="budget holds",
        )

    async def follow_weights(self, stop: asyncio.Event) -> None:
        """Load each version of the routing weights the learner announces, until ``stop``."""

        async def load(version: int) -> int | None:
            latest = await self.snapshots.latest()  # the newest, at least the one announced
            if latest is None:
                return None
            if latest.version != self.router.learned.version:
                weights = await asyncio.to_thread(
                    RoutingWeights.from_dict, latest.state, previous=self.router.learned.weights
                )
                self.router.learned.use(weights, latest.version, events=latest.events)
            return latest.version

        channel = WeightsChannel(self.bus, replicas=self.settings.streams.replicas)
        await channel.follow(load, stop)

    def learning_state(self) -> dict[str, object]:
        """What this process routes ``learned`` calls by: the weights' version and age."""
        learned = self.router.learned
        age = learned.age_seconds()
        return {
            "weights_version": learned.version,
            "loaded_seconds_ago": None if age is None else round(age, 1),
            "note": "routing keeps the weights it has while the learner is away"
            if learned.version is not None
            else "no weights yet: the learned strategy routes by its cold-start strategy",
        }

    def supervision(self) -> dict[str, str] | None:
        """Name the children of ``spine up`` that are not running well, with their state.

        ``None`` when this process does not run under ``spine up``. Cheap: the supervisor's
        state file is parsed again only when it changed (one ``stat`` otherwise).
        """
        path = self.settings.supervisor.state_file
        if path is None:
            return None
        if self._supervision is None or self._supervision.path != path:
            self._supervision = SupervisionReader(path)
        return self._supervision.unhealthy()

    async def close(self) -> None:
        """Close connections."""
        if self._warming is not None and not self._warming.done():
            self._warming.cancel()
            await asyncio.gather(self._warming, return_exceptions=True)
        # Streams still settling report their outcomes before the publisher drains, the usage
        # rows and publish marks written behind are drained before the database is disposed, and
        # the publisher drains before the connection closes.
        with contextlib.suppress(Exception):
            await self._resources.aclose()  # MCP servers
        with contextlib.suppress(Exception):
            await self.metered.close()
        with contextlib.suppress(Exception):
            await self.tasks.close()  # publish marks written behind
        with contextlib.suppress(Exception):
            await self.outcomes.close()
        with contextlib.suppress(Exception):
            await self.knowledge.close()
        with contextlib.suppress(Exception):
            await self.bus.close()
        await self.db.dispose()


def tool_registry(
    settings: Settings,
    catalog: AgentCatalog,
    *,
    bus: NatsBus,
    store: TaskStore,
    dispatcher: TaskDispatcher,
    searcher: VectorSearcher | None = None,
    graph: GraphExplorer | None = None,
) -> ToolRegistry:
    """Register the built-in tools and delegation under the configured allowlists.

    Each declarative agent may use only the tools its definition lists; the tools named in
    ``GENAI_TOOLS__APPROVAL`` wait for a person's approval before each call.
    """
    configured = settings.tools
    policy = ToolPolicy.of(default=configured.default, tenants=configured.tenants)
    for definition in catalog.definitions():
        policy = policy.with_agent(definition.name, definition.tools)
    tools = [
        *builtin_tools(publisher=bus, searcher=searcher),
        submit_task_tool(dispatcher, store),
        *(graph_tools(graph) if graph is not None else []),  # when a graph is configured
    ]
    if searcher is not None and graph is not None:
        tools.append(hybrid_search_tool(HybridRetriever(searcher, graph)))
    gated = set(configured.approval)
    return ToolRegistry(
        [dataclasses.replace(t, needs_approval=True) if t.name in gated else t for t in tools],
        policy=policy,
    )
