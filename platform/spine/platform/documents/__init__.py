"""Documents: stored in chunks (:mod:`.chunking`), embedded through the router, searched by
tenant in pgvector (:mod:`.vector_search`); the store is :mod:`.store`."""

from spine.platform.documents.models import (
    Document,
    DocumentInput,
    DocumentStatus,
    TextEmbedder,
    VectorStoreUnsupported,
)
from spine.platform.documents.store import DocumentStore
from spine.platform.documents.vector_search import SearchHit, SearchQuery, SearchResult

__all__ = [
    "Document",
    "DocumentInput",
    "DocumentStatus",
    "DocumentStore",
    "SearchHit",
    "SearchQuery",
    "SearchResult",
    "TextEmbedder",
    "VectorStoreUnsupported",
]
