"""What a document is, and what the document store needs of the model calls."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from spine.platform.errors import SpineError
from spine.platform.inputs import StoredJson, StoredText
from spine.platform.metering import CallContext, MeteredEmbedding
from spine.platform.models import EmbeddingRequest
from spine.platform.router import ModelRouter

__all__ = [
    "Document",
    "DocumentInput",
    "DocumentStatus",
    "TextEmbedder",
    "VectorStoreUnsupported",
]

DocumentStatus = Literal["queued", "embedded", "failed"]


class VectorStoreUnsupported(SpineError):
    """The database cannot hold vectors: SQLite, or PostgreSQL without pgvector."""

    status_code = 501
    error_type = "not_supported"


class TextEmbedder(Protocol):
    """What the store needs of :class:`~spine.platform.metering.MeteredModels`."""

    @property
    def router(self) -> ModelRouter:
        """The router whose catalog names the embedding models."""
        ...

    async def embed(self, request: EmbeddingRequest, context: CallContext) -> MeteredEmbedding:
        """Embed texts, metered as ``context``'s."""
        ...


class DocumentInput(BaseModel):
    """A document to store: its text (plain or markdown), where it came from, its metadata."""

    model_config = ConfigDict(extra="forbid")

    text: StoredText
    format: Literal["markdown", "text"] = "markdown"
    metadata: Annotated[dict[str, Any], StoredJson] = Field(default_factory=dict)
    source: StoredText | None = Field(None, max_length=1000, description="A file name or URL.")


class Document(BaseModel):
    """A stored document (its text lives in its chunks)."""

    id: str
    tenant: str
    key_id: str | None = Field(description="The key that added it.")
    source: str | None
    format: str
    metadata: dict[str, Any]
    status: DocumentStatus
    size: int = Field(description="Bytes of text (UTF-8).")
    chunk_count: int
    model: str | None = Field(description="The model that embeds it.")
    attempts: int = Field(description="Embedding attempts that failed.")
    error: dict[str, Any] | None = Field(description="Why the last attempt failed.")
    task_id: str | None
    created_at: datetime
    updated_at: datetime
    embedded_at: datetime | None
