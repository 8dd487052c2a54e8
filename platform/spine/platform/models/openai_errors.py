"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

:class:`GatewayError` carries OpenAI's status, type, code and the parameter at fault, so the
official clients raise the exception a caller expects (404 ``model_not_found``, 400 naming the
parameter, 429 ``insufficient_quota``, ...). :meth:`GatewayError.of` translates any platform
error into those terms; the gateway, files, batches and the ``completion`` agent answer with it.
"""

from __future__ import annotations

import contextlib
import math
from datetime import UTC, datetime
from typing import Any

from spine.platform.errors import (
    BadRequest,
    BudgetExceeded,
    ContextWindowExceeded,
    PermanentFailure,
    ProviderNotConfigured,
    ServiceUnavailable,
    SpineError,
    TaskCancelled,
    TransientFailure,
    Unauthorized,
    UnknownModel,
)
from spine.platform.inputs import MAX_JSON_DEPTH, InvalidInput, load_json

__all__ = ["GatewayError", "error_body", "json_body"]

# Our strategy names the field "strategy"; on the wire it is "spine_strategy".
_PARAM_NAMES = {"strategy": "spine_strategy"}
_REFUSED_BY_PROVIDER = {"BadRequestError", "UnsupportedParamsError", "UnprocessableEntityError"}


class GatewayError(SpineError):
    """An error already in OpenAI's terms: status, type, code and the parameter at fault.

    Part of the one error tree; the gateway renders it in OpenAI's shape (``body``), and
    anything else that meets it renders it in the platform's (``status_code``, ``error_type``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message, field=param)
        self.status = status
        self.status_code = status  # type: ignore[misc]  # per instance, unlike the tree's classes
        self.error_type = type  # type: ignore[misc]
        self.body: dict[str, Any] = {
            "message": message,
            "type": type,
            "param": param,
            "code": code,
            **extra,
        }
        self.headers = headers or {}

    @classmethod
    def of(cls, exc: SpineError) -> GatewayError:
        """Translate a platform error into OpenAI's status, type and code."""
        if isinstance(exc, GatewayError):
            return exc
        cause = str(exc.details.get("cause") or "")
        param = _PARAM_NAMES.get(exc.field or "", exc.field)
        if isinstance(exc, UnknownModel):
            return cls(404, exc.message, param="model", code="model_not_found")
        if isinstance(exc, ContextWindowExceeded):
            return cls(400, exc.message, param=param or "messages", code="context_length_exceeded")
        if isinstance(exc, Unauthorized):
            return cls(401, exc.message, code="invalid_api_key")
        if isinstance(exc, BudgetExceeded):
            return cls._budget(exc)
        if isinstance(exc, BadRequest):
            code = exc.details.get("code")  # OpenAI's own, where it has one
            if not isinstance(code, str):
                code = None if exc.error_type == "invalid_request" else exc.error_type
            return cls(exc.status_code, exc.message, param=param, code=code)
        if isinstance(exc, ProviderNotConfigured):
            return cls(503, exc.message, type="service_unavailable", code=exc.error_type)
        if isinstance(exc, ServiceUnavailable):  # a backing service (database, NATS, ...)
            return cls(503, exc.message, type="service_unavailable", code="service_unavailable")
        if isinstance(exc, TransientFailure):
            # The provider's wait (its own 429), or the breakers' (every model cooling down).
            wait = _retry_after(exc)
            if cause == "RateLimitError":
                return cls(
                    429,
                    exc.message,
                    type="rate_limit_error",
                    code="rate_limit_exceeded",
                    headers=wait,
                )
            if not cause:  # every model is cooling down after failures
                return cls(
                    503,
                    exc.message,
                    type="service_unavailable",
                    code="models_unavailable",
                    headers=wait,
                )
            return cls(502, exc.message, type="upstream_error", code="provider_error")
        if isinstance(exc, PermanentFailure):
            if cause in _REFUSED_BY_PROVIDER:
                return cls(400, exc.message, code="provider_rejected_request")
            if cause == "NotFoundError":
                return cls(404, exc.message, param="model", code="model_not_found")
            return cls(502, exc.message, type="upstream_error", code="provider_error")
        return cls(
            exc.status_code, exc.message, type=exc.error_type, param=param, code=exc.error_type
        )

    @classmethod
    def unknown_parameters(cls, names: list[str]) -> GatewayError:
        """Refuse parameters no route takes, as OpenAI words it, naming the first of them."""
        return cls(
            400,
            f"unrecognized request argument(s): {', '.join(names)}",
            param=names[0],
            code="unknown_parameter",
        )

    @classmethod
    def unstorable(cls, exc: InvalidInput) -> GatewayError:
        """Refuse a value that cannot be stored: 400 naming the top-level parameter."""
        param = (exc.field or "").split(".", 1)[0] or None
        return cls(400, exc.message, param=param)

    @classmethod
    def of_task_error(cls, error: dict[str, Any]) -> GatewayError | None:
        """Translate a failed task's stored error (``SpineError.to_dict()``) the same way.

        None when the error is not one of the platform's own (too many attempts, a deadline
        passed, a cancel): those have no HTTP answer to stand for.
        """
        kind = _error_types(SpineError).get(str(error.get("type")))
        if kind is None or kind is TaskCancelled:
            return None
        field = error.get("field")
        details = {k: v for k, v in error.items() if k not in _NOT_DETAILS}
        exc = kind(
            str(error.get("message") or kind.error_type),
            field=field if isinstance(field, str) else None,
            **details,
        )
        return cls.of(exc)

    @classmethod
    def _budget(cls, exc: BudgetExceeded) -> GatewayError:
        # OpenAI's own "quota spent" type; our fields say which budget, its spend and reset.
        # Clients must not retry before the reset: x-should-retry stops the official ones.
        headers = {"x-should-retry": "false"}
        resets_at = exc.details.get("resets_at")
        if isinstance(resets_at, str):
            with contextlib.suppress(ValueError):
                wait = datetime.fromisoformat(resets_at) - datetime.now(UTC)
                headers["Retry-After"] = str(max(math.ceil(wait.total_seconds()), 1))
        fields = {
            name: exc.details[name]
            for name in ("scope", "budget", "spent", "reserved", "requested", "resets_at")
            if name in exc.details
        }
        return cls(
            429,
            exc.message,
            type="insufficient_quota",
            code="budget_exceeded",
            headers=headers,
            **fields,
        )


def _error_types(root: type[SpineError]) -> dict[str, type[SpineError]]:
    found = {root.error_type: root}
    for child in root.__subclasses__():
        found.update({k: v for k, v in _error_types(child).items() if k not in found})
    return found


# Keys of a stored task error that are not the error's own details.
_NOT_DETAILS = frozenset({"type", "message", "field", "retryable", "attempts", "reason"})


def error_body(error: GatewayError) -> dict[str, Any]:
    """Return the OpenAI error object for ``error``."""
    return {"error": dict(error.body)}


def _retry_after(exc: SpineError) -> dict[str, str]:
    """``Retry-After`` (whole seconds, at least 1) of an error that says how long to wait."""
    wait = exc.details.get("retry_after")
    if isinstance(wait, int | float) and not isinstance(wait, bool) and math.isfinite(wait):
        return {"Retry-After": str(max(math.ceil(wait), 1))}
    return {}


def json_body(
    raw: bytes, *, checked: Any = None, max_depth: int = MAX_JSON_DEPTH
) -> dict[str, Any]:
    """A request's JSON object, or a 400 in OpenAI's shape saying what is wrong with it.

    ``checked`` is the body decoded and found storable already (by the API's input guard), if
    it was: then ``raw`` is neither decoded nor checked again.
    """
    body = checked
    if body is None:
        try:
            body = load_json(raw, max_depth=max_depth, field="")
        except InvalidInput as exc:
            raise GatewayError.unstorable(exc) from None
        except ValueError as exc:
            raise GatewayError(400, f"the body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "the body must be a JSON object")
    return body
