"""The error tree of GenAI Spine.

Every error the platform raises on purpose derives from :class:`SpineError`. Adapters translate
third-party errors (nats, SQLAlchemy, LiteLLM, httpx, neo4j) into this tree with
``raise ... from exc``; the HTTP layer renders any of them as one JSON shape.

```
SpineError                      retryable  http
├── ConfigurationError          no         500   a setting is missing or invalid
├── BadRequest                  no         400   the caller asked for something impossible
│   ├── UnknownAgent            no         400
│   ├── UnknownModel            no         404   no configured model has that name
│   ├── IdempotencyConflict     no         409   same Idempotency-Key, other body
│   ├── PayloadTooLarge         no         413   an upload over its size or line limit
│   ├── InvalidInput            no         400   (inputs) a value that cannot be stored: NUL, ...
│   ├── InvalidEvent            no         400   (events) a CloudEvent that is not one
│   ├── MappingError            no         400   (graph) an event whose mapped key is unusable
│   ├── UnknownIdentifier, UnsafeQuery, TenantLeak   (graph) exploration refused
│   └── ArgumentsInvalid        no         400   (tools) arguments that do not fit the schema
├── Unauthorized                no         401
├── Forbidden                   no         403   the key's role may not do this
├── NotFound                    no         404   (also for another tenant's objects)
├── Conflict                    no         409   e.g. cancelling a finished task
├── BudgetExceeded              no         429   a budget is spent (resets when its period ends)
├── RateLimited                 yes        429   (limits) requests or tokens per minute used up
├── ServiceUnavailable          yes        503   a backing service (NATS, database, ...) is down
├── GatewayError                no         any   (models) an error already in OpenAI's terms
├── GraphError, VectorStoreUnsupported           (graph, documents) their stores' refusals
└── RunFailure                  per kind   -     a model call, a tool or a task's attempt failed
    ├── TransientFailure        yes        -     may pass: fall back, or redeliver with backoff
    ├── PermanentFailure        no         -     will not pass: fail at once, dead-letter
    │   ├── ProviderNotConfigured no       -     no model provider can be reached
    │   ├── ContextWindowExceeded no       400   the prompt does not fit the model's context
    │   └── EgressDenied        no         -     (tools) a destination the platform may not reach
    ├── ToolFailure             per call   -     (tools) what the model is told; CalculationError
    └── TaskCancelled           no         -     a cancel was requested
```
``retryable`` decides nak (redeliver later) versus dead-letter for a task.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadRequest",
    "BudgetExceeded",
    "ConfigurationError",
    "Conflict",
    "ContextWindowExceeded",
    "Forbidden",
    "IdempotencyConflict",
    "NotFound",
    "PayloadTooLarge",
    "PermanentFailure",
    "ProviderNotConfigured",
    "RateLimited",
    "RunFailure",
    "ServiceUnavailable",
    "SpineError",
    "TaskCancelled",
    "TransientFailure",
    "Unauthorized",
    "UnknownAgent",
    "UnknownModel",
]


class SpineError(Exception):
    """Root of every error the platform raises on purpose."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"
    retryable: bool = False
    # A policy refused the request (a role, a tenant boundary, an unsafe query): the audit log
    # records it as ``denied``, as a probe worth seeing. Every 403 is one.
    refusal: ClassVar[bool] = False

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """Render the error as the body of the one JSON error shape."""
        body: dict[str, Any] = {"type": self.error_type, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        body.update(self.details)
        return body


class ConfigurationError(SpineError):
    """A setting is missing or invalid."""

    error_type = "configuration_error"


class BadRequest(SpineError):
    """The request cannot be carried out as asked."""

    status_code = 400
    error_type = "invalid_request"


class UnknownAgent(BadRequest):
    """The task names an agent that no worker knows."""

    error_type = "unknown_agent"


class UnknownModel(BadRequest):
    """The request names a model the router does not know."""

    status_code = 404
    error_type = "model_not_found"


class IdempotencyConflict(BadRequest):
    """An Idempotency-Key was reused with a different request body."""

    status_code = 409
    error_type = "idempotency_conflict"


class PayloadTooLarge(BadRequest):
    """An upload is over a size or count limit (a batch file's bytes or lines)."""

    status_code = 413
    error_type = "request_too_large"


class Unauthorized(SpineError):
    """The API key is missing, unknown or revoked."""

    status_code = 401
    error_type = "unauthorized"


class Forbidden(SpineError):
    """The key is valid, but its role may not do this (a member changing an experiment)."""

    status_code = 403
    error_type = "forbidden"


class NotFound(SpineError):
    """The object does not exist for this tenant."""

    status_code = 404
    error_type = "not_found"


class Conflict(SpineError):
    """The object is in a state that does not allow the operation."""

    status_code = 409
    error_type = "conflict"


class BudgetExceeded(SpineError):
    """A budget (daily, weekly or monthly) cannot cover the call.

    ``details`` name the ``scope`` (``global``, ``tenant:<t>`` or ``key:<id>``), its ``period``,
    its ``budget``, what is ``spent`` and ``reserved`` by calls in flight (amounts as decimal
    strings), and ``resets_at``, when the period ends (UTC midnight). Not retryable: a task
    would only burn its attempts before the reset.
    """

    status_code = 429
    error_type = "budget_exceeded"


class RateLimited(SpineError):
    """A key or tenant used up its requests or tokens per minute; it may try again later.

    ``details`` name the ``scope`` (``key:<id>`` or ``tenant:<name>``), what ran out
    (``limit_type``: ``requests`` or ``tokens``), the ``limit`` per minute and ``retry_after``,
    the seconds until it frees up. The HTTP answer carries ``Retry-After``.
    """

    status_code = 429
    error_type = "rate_limit_exceeded"
    retryable = True

    def __init__(
        self, message: str, *, headers: dict[str, str] | None = None, **details: Any
    ) -> None:
        super().__init__(message, **details)
        self.headers = dict(headers or {})


class ServiceUnavailable(SpineError):
    """A backing service cannot be reached; trying again later may work."""

    status_code = 503
    error_type = "service_unavailable"
    retryable = True


class RunFailure(SpineError):
    """A model call, a tool call or a task's attempt could not be carried out."""

    error_type = "task_failed"


class TransientFailure(RunFailure):
    """It failed for a reason that may pass: another model, or a later attempt, may succeed."""

    error_type = "transient_error"
    retryable = True


class PermanentFailure(RunFailure):
    """It failed for a reason that will not pass: a task fails and is dead-lettered."""

    error_type = "permanent_error"


class ProviderNotConfigured(PermanentFailure):
    """No model provider is reachable; the message says what to configure."""

    error_type = "provider_not_configured"


class ContextWindowExceeded(PermanentFailure):
    """The prompt and the answer asked for do not fit the model's context window.

    Permanent for that model, yet another model with a larger window may answer: the model
    router falls back on it.
    """

    status_code = 400
    error_type = "context_length_exceeded"


class TaskCancelled(RunFailure):
    """The task was cancelled while it ran."""

    error_type = "cancelled"
