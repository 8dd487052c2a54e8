"""Embedding documents durably, on the task backbone.

Adding a document commits it (``queued``) and submits a task for the ``embed_document`` agent;
the task backbone then gives the embedding its guarantees: the task is committed before it is
published, delivered at least once, retried with backoff when the provider is down, and
dead-lettered after its attempts. The document outlives its task: while it is still queued and
no live task holds it, :class:`DocumentIndexer`'s sweeper submits a new task after
``GENAI_DOCUMENTS__RETRY_AFTER`` seconds, so a provider down for hours only delays it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from spine.agents.base import RunContext
from spine.agents.dispatch import TaskDispatcher
from spine.platform.documents.store import Document, DocumentStore
from spine.platform.keys import Principal
from spine.platform.metering import CallContext
from spine.platform.periodic import run_every
from spine.platform.settings import DocumentSettings
from spine.platform.tasks import Task, TaskSubmission

__all__ = ["EMBED_DOCUMENT", "DocumentIndexer", "EmbedDocumentAgent", "EmbedDocumentInput"]

logger = logging.getLogger(__name__)

EMBED_DOCUMENT = "embed_document"
# A document with no task this long after it was added lost its task to a crash in between.
ORPHAN_AFTER = 30.0


class EmbedDocumentInput(BaseModel):
    """The input of an ``embed_document`` task."""

    model_config = ConfigDict(extra="forbid")

    document_id: str = Field(min_length=1, max_length=36)


class EmbedDocumentAgent:
    """Embeds every chunk of one queued document and makes it searchable."""

    name: ClassVar[str] = EMBED_DOCUMENT
    description: ClassVar[str] = (
        "Embed a stored document's chunks (submitted by POST /v1/documents)."
    )
    input_model: ClassVar[type[BaseModel]] = EmbedDocumentInput

    def __init__(self, store: DocumentStore) -> None:
        self._store = store

    async def run(self, ctx: RunContext, request: BaseModel) -> dict[str, Any]:
        """Embed the document as the task's tenant; a failure leaves it queued or failed.

        Raises:
            SpineError: The store's error: retryable ones (a provider down) retry the task.
        """
        assert isinstance(request, EmbedDocumentInput)
        task = ctx.task
        context = CallContext(
            tenant=task.tenant,
            key_id=task.key_id,
            task_id=task.id,
            task_category=self.name,
            use_cache=False,
        )
        document = await ctx.step(self._store.embed(request.document_id, context))
        if document is None:
            return {"document_id": request.document_id, "status": "deleted"}
        await ctx.emit("document", {"document_id": document.id, "status": document.status})
        return {
            "document_id": document.id,
            "status": document.status,
            "chunks": document.chunk_count,
            "model": document.model,
        }


class DocumentIndexer:
    """Submits the tasks that embed documents, and submits them again when they gave up."""

    def __init__(
        self,
        *,
        store: DocumentStore,
        dispatcher: TaskDispatcher,
        settings: DocumentSettings,
        interval: float,
    ) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._settings = settings
        self._interval = interval

    async def schedule(self, document: Document) -> Task:
        """Submit the task that embeds ``document`` (as the key that added it), and note it."""
        principal = Principal(key_id=document.key_id or "", tenant=document.tenant, role="member")
        task, _ = await self._dispatcher.submit(
            TaskSubmission(
                agent=EMBED_DOCUMENT,
                input={"document_id": document.id},
                metadata={"document_id": document.id},
                priority="low",
            ),
            principal=principal,
            idempotency_key=None,
        )
        await self._store.attach_task(document.id, task.id)
        return task

    async def sweep_once(self) -> int:
        """Schedule again the queued documents that no live task will embed; return how many."""
        waiting = await self._store.waiting(
            retry_after=self._settings.retry_after, orphan_after=ORPHAN_AFTER
        )
        count = 0
        for document in waiting:
            if not await self._store.claim_retry(document):
                continue  # another API process took it
            task = await self.schedule(document)
            logger.info(
                "document %s still queued after %d failed attempts: task %s tries again",
                document.id,
                document.attempts,
                task.id,
            )
            count += 1
        return count

    async def run_sweeper(self, stop: asyncio.Event) -> None:
        """Sweep every ``interval`` seconds until ``stop`` is set."""
        await run_every(self.sweep_once, interval=self._interval, stop=stop, name="document sweep")
