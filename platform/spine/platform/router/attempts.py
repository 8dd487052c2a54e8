"""The bookkeeping of a routed call's attempts: a failure noted, a plan narrowed, the end."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spine.platform.errors import BadRequest, ContextWindowExceeded, SpineError, TransientFailure
from spine.platform.models import Attempt
from spine.platform.router.health import CallKind, CircuitBreaker, ModelHealth, Permit
from spine.platform.router.specs import ModelSpec, Requirements

__all__ = ["RoutePlan", "admitted", "exhausted", "param_named", "record_failure", "unmet"]

logger = logging.getLogger(__name__)


@dataclass(slots=True, kw_only=True, frozen=True)
class RoutePlan:
    """The models one call will try, in order, and the strategy that ordered them."""

    strategy: str
    models: list[ModelSpec]
    decision: dict[str, Any] | None = None
    """How the ``learned`` strategy chose (its audit record); None for the other strategies."""


def record_failure(
    exc: SpineError,
    spec: ModelSpec,
    breaker: CircuitBreaker,
    permit: Permit,
    path: list[Attempt],
) -> None:
    """Note a failed attempt; re-raise unless the next model may succeed where this one failed.

    Only a failure to answer counts against the model's health; a refusal (4xx, context
    overflow) shows the model is up.
    """
    (breaker.failed if exc.retryable else breaker.succeeded)(permit)
    cause = str(exc.details.get("cause") or type(exc).__name__)
    path.append(Attempt(model=spec.name, provider=spec.provider, error=cause))
    if not (exc.retryable or isinstance(exc, ContextWindowExceeded)):
        raise exc
    logger.warning("model %s failed (%s); trying the next", spec.name, cause)


def admitted(plan: RoutePlan, admit: Callable[[ModelSpec], bool] | None) -> RoutePlan:
    """Narrow ``plan`` to the models ``admit`` accepts; refuse the call if none is left."""
    if admit is None:
        return plan
    kept = [spec for spec in plan.models if admit(spec)]
    if not kept:
        raise BadRequest(
            "none of the models that could answer may be used for this call: "
            + ", ".join(spec.name for spec in plan.models)
        )
    return RoutePlan(strategy=plan.strategy, models=kept, decision=plan.decision)


def param_named(lacking: str, requirements: Requirements) -> str:
    """Name the parameter a refusal is about, for the error's ``param``."""
    for name in sorted(requirements.params):
        if name in lacking:
            return name
    for name in ("response_format", "messages"):
        if f"({name})" in lacking:
            return name
    return "tools"


def unmet(
    chat_models: list[ModelSpec], requirements: Requirements
) -> tuple[str | None, str | None]:
    """Name the parameter (and OpenAI's code) of a chat call no model of the catalog meets.

    Too long for every model is ``context_length_exceeded``: of ``max_tokens`` when the prompt
    alone would fit one, else of ``messages``. Otherwise the parameter a model that has the
    room lacks (``tools``, ``response_format``, ...); None when nothing a client sends is at
    fault (a quality floor).
    """
    roomy = [s for s in chat_models if not _too_small(s, requirements.context_tokens)]
    if chat_models and not roomy:
        prompt_fits = any(not _too_small(s, requirements.prompt_tokens) for s in chat_models)
        param = "max_tokens" if prompt_fits and requirements.max_tokens else "messages"
        return param, "context_length_exceeded"
    for spec in roomy:
        lacking = spec.unsupported(requirements)
        if lacking is not None:
            return param_named(lacking, requirements), None
    return None, None


def _too_small(spec: ModelSpec, tokens: int) -> bool:
    return spec.context_window is not None and tokens > spec.context_window


def exhausted(
    health: ModelHealth,
    path: list[Attempt],
    last_error: SpineError | None,
    *,
    kind: CallKind = "chat",
) -> SpineError:
    """The error of a call every model of whose plan failed (or was cooling down)."""
    tried = ", ".join(f"{a.model} ({a.provider}: {a.error})" for a in path)
    shown = [f"{a.model}: {a.error}" for a in path]
    if last_error is None:
        wait = min((health.breaker(a.model, kind).retry_in() for a in path), default=0.0)
        return TransientFailure(
            f"every model that could answer is cooling down after failures ({tried}); "
            f"the next probe is in {wait:.1f} s",
            fallback_path=shown,
            retry_after=wait,  # the gateway's Retry-After
        )
    details = {**last_error.details, "fallback_path": shown}
    return type(last_error)(
        f"{last_error.message} [tried: {tried}]", field=last_error.field, **details
    )
