"""The knowledge layer of a process: events in, the graph, triggers and the graph tools.

Part of the composition root (like :mod:`spine.platform.app.wiring`): it builds the event log,
schemas, mappings, trigger rules and the one long-lived graph store from the settings (Neo4j
over Bolt, or FalkorDB over its Redis protocol: :func:`spine.graph.backends.open_store`), runs
the two EVENTS consumers (graph ingestion, triggers) in worker processes, and answers whether
the graph server is up for ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from spine.agents.catalog import AgentCatalog
from spine.agents.dispatch import TaskDispatcher
from spine.agents.triggers import TriggerRules, TriggerRunner
from spine.events.bus import NatsBus
from spine.events.intake import EventIntake
from spine.events.log import EventLog
from spine.events.schemas import EventSchemas
from spine.events.streams import StreamLayout
from spine.graph.backends import open_store
from spine.graph.explore import GraphExplorer
from spine.graph.ingest import GraphIngestor
from spine.graph.mapping import MappingSet
from spine.graph.store import GraphStore
from spine.platform.db import Database
from spine.platform.errors import NotFound, ServiceUnavailable
from spine.platform.settings import Settings
from spine.tools.builtin.graph import graph_tools
from spine.tools.tool import Tool

__all__ = ["KnowledgeLayer"]

logger = logging.getLogger(__name__)

RESEND_AFTER = 60.0
"""Seconds an event may stay ``pending`` without an ingestion attempt before it is resent."""
RESEND_EVERY = 30.0
"""Seconds between the API's looks for such events."""
READY_TIMEOUT = 2.0
"""Seconds ``/readyz`` waits for each backing service (a frozen server is not ready)."""


@dataclass(slots=True, kw_only=True)
class KnowledgeLayer:
    """Everything the knowledge layer needs, built once per process."""

    settings: Settings
    bus: NatsBus
    log: EventLog
    schemas: EventSchemas
    mappings: MappingSet
    rules: TriggerRules
    intake: EventIntake
    store: GraphStore | None
    explorer: GraphExplorer | None

    @classmethod
    def build(cls, settings: Settings, *, db: Database, bus: NatsBus) -> KnowledgeLayer:
        """Read the folders and open (not connect) the graph store when one is configured."""
        knowledge = settings.knowledge
        log = EventLog(db)
        schemas = EventSchemas.load(knowledge.schemas_dir)
        mappings = MappingSet.load(knowledge.mappings_dir)
        explorer = None
        store = open_store(settings)
        if store is not None:
            explorer = GraphExplorer(
                store,
                mappings,
                query_timeout=knowledge.query_timeout,
                max_rows=knowledge.query_max_rows,
            )
        return cls(
            settings=settings,
            bus=bus,
            log=log,
            schemas=schemas,
            mappings=mappings,
            rules=TriggerRules.load(knowledge.triggers_dir),
            intake=EventIntake(
                bus=bus, log=log, schemas=schemas, max_event_bytes=knowledge.max_event_bytes
            ),
            store=store,
            explorer=explorer,
        )

    async def resend_pending_events(self) -> int:
        """Publish again events whose publish never reached ingestion (see
        :meth:`EventIntake.resend_pending`); the API runs it every ``RESEND_EVERY`` seconds."""
        try:
            sent = await self.intake.resend_pending(older_than=RESEND_AFTER)
        except ServiceUnavailable as exc:
            logger.info("pending events not resent yet: %s", exc.message)
            return 0
        if sent:
            logger.info("published %d pending event(s) again", sent)
        return sent

    def graph(self) -> GraphExplorer:
        """Return the explorer, or answer that no graph is configured."""
        if self.explorer is None:
            raise NotFound(
                "no knowledge graph is configured (set GENAI_FALKORDB_URL or GENAI_NEO4J_URI, "
                "or run `spine up`)"
            )
        return self.explorer

    def tools(self) -> list[Tool[Any]]:
        """Return the graph tools when a graph is configured."""
        return graph_tools(self.explorer) if self.explorer is not None else []

    def ingestor(self, layout: StreamLayout) -> GraphIngestor:
        """Build the graph ingestion consumer."""
        return GraphIngestor(
            bus=self.bus,
            log=self.log,
            schemas=self.schemas,
            mappings=self.mappings,
            store=self.store,
            layout=layout,
            settings=self.settings.knowledge,
        )

    def triggers(
        self, *, dispatcher: TaskDispatcher, layout: StreamLayout, catalog: AgentCatalog
    ) -> TriggerRunner:
        """Build the trigger consumer; a rule naming an unknown agent stops start-up."""
        self.rules.check_agents(catalog)
        return TriggerRunner(
            bus=self.bus,
            rules=self.rules,
            dispatcher=dispatcher,
            schemas=self.schemas,
            layout=layout,
            settings=self.settings.knowledge,
        )

    async def run_consumers(
        self,
        stop: asyncio.Event,
        *,
        dispatcher: TaskDispatcher,
        layout: StreamLayout,
        catalog: AgentCatalog,
    ) -> None:
        """Run graph ingestion and triggers until ``stop`` is set (a worker's component).

        The triggers' consumer runs with no rules too: events pass it by as they come, so a
        rule enabled later never fires on events received before it.
        """
        async with asyncio.TaskGroup() as runners:
            runners.create_task(self.ingestor(layout).run(stop))
            runners.create_task(
                self.triggers(dispatcher=dispatcher, layout=layout, catalog=catalog).run(stop)
            )

    async def ready(self) -> dict[str, str]:
        """Say whether the graph server answers within :data:`READY_TIMEOUT` (``{}``: none)."""
        if self.store is None:
            return {}
        try:
            await self.store.ping(timeout=READY_TIMEOUT)
        except ServiceUnavailable as exc:
            return {"graph": exc.message}
        return {"graph": "ok"}

    async def close(self) -> None:
        """Close the graph store."""
        if self.store is not None:
            with contextlib.suppress(Exception):
                await self.store.close()
