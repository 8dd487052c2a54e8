"""Metering of model calls: the response cache, budgets, the usage ledger, and the one path
every routed call takes through them (:class:`MeteredModels`)."""

from spine.platform.metering.caller import CallerModels
from spine.platform.metering.context import (
    ABANDONED,
    EXPLICIT,
    CacheStatus,
    CallContext,
    OutcomeHook,
)
from spine.platform.metering.metered import (
    MeteredCompletion,
    MeteredEmbedding,
    MeteredModels,
)
from spine.platform.metering.streams import MeteredStream
from spine.platform.metering.usage import ModelCallRecord

__all__ = [
    "ABANDONED",
    "EXPLICIT",
    "CacheStatus",
    "CallContext",
    "CallerModels",
    "MeteredCompletion",
    "MeteredEmbedding",
    "MeteredModels",
    "MeteredStream",
    "ModelCallRecord",
    "OutcomeHook",
]
