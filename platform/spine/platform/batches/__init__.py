"""Batches: OpenAI batch JSONL (:mod:`.input`) run as low-priority tasks (:mod:`.lines`), with
progress and output files (:mod:`.output`, :mod:`.files`), kept by :mod:`.store`."""

from spine.platform.batches.files import FileStore
from spine.platform.batches.input import BatchCreate, BatchLimits
from spine.platform.batches.lines import LINE_AGENT, line_key
from spine.platform.batches.output import Batch
from spine.platform.batches.store import Batches, LineDispatcher

__all__ = [
    "LINE_AGENT",
    "Batch",
    "BatchCreate",
    "BatchLimits",
    "Batches",
    "FileStore",
    "LineDispatcher",
    "line_key",
]
