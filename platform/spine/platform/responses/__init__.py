"""The Responses API's kept answers (:class:`ResponseStore`): what ``previous_response_id``
continues from, and what ``GET /v1/responses/{id}`` reads back."""

from spine.platform.responses.store import ResponseStore, StoredResponse

__all__ = ["ResponseStore", "StoredResponse"]
