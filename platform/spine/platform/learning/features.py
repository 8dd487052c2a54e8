"""Request features for learned routing: cheap to compute, never the text itself.

A request becomes one sparse vector in a fixed :class:`FeatureSpace`, in five blocks:

- **text**: the prompt's word unigrams and bigrams (numbers folded to one token), hashed with
  a sign into ``text_dims`` buckets and L2-normalised, so the block says *what kind* of prompt
  this is, whatever its length;
- **category**: the task category or agent, hashed twice (two signed buckets of
  ``1/sqrt(2)``), so two of many categories rarely share both buckets;
- **tenant**: the tenant, hashed once;
- **bias**: a constant 1, the model's overall level;
- **shape**: six numbers on a fixed scale (about -3..3): the prompt's length, how many numbers
  it holds, its lines, question marks, the longest number, and its share of punctuation.

Hashing uses CRC-32 (stable across processes, unlike ``hash``), and every value is rounded to
4 decimals when it is made, so the vector put in an event and the one a decision used are the
same numbers. Extraction reads at most the first :data:`MAX_CHARS` characters of the text.
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MAX_CHARS", "FeatureSpace", "SparseFeatures", "prompt_text"]

MAX_CHARS = 4000
_TOKEN = re.compile(r"[a-z]+|\d+(?:[.,]\d+)*|[^\sa-z\d]")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_PUNCTUATION = re.compile(r"[^\w\s]")
_SHAPE_FEATURES = 6
_ROUND = 4
_HIGH_BIT = 1 << 31


@lru_cache(maxsize=1 << 16)
def _bucket(key: str, size: int) -> tuple[int, float]:
    code = zlib.crc32(key.encode())
    return code % size, (-1.0 if code & _HIGH_BIT else 1.0)


def _clip(value: float) -> float:
    return round(max(-3.0, min(3.0, value)), _ROUND)


class SparseFeatures(BaseModel):
    """One request's features: indices and values in the feature space named by ``space``.

    This is what an outcome event carries for the learner (a few hundred bytes), never the
    prompt. Indices are unique and ascending.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    space: str = Field(min_length=1, description="The feature space's id (its layout).")
    indices: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(slots=True, kw_only=True, frozen=True)
class FeatureSpace:
    """The layout of the feature vector, and the function from a request to a vector in it."""

    text_dims: int = 256
    category_dims: int = 96
    tenant_dims: int = 16

    def __post_init__(self) -> None:
        if min(self.text_dims, self.category_dims, self.tenant_dims) < 2:
            raise ValueError("every block of a feature space needs at least 2 dimensions")

    @property
    def id(self) -> str:
        """Name the layout, so weights made in another one are refused rather than misread."""
        return f"v1-t{self.text_dims}-c{self.category_dims}-n{self.tenant_dims}"

    @property
    def dims(self) -> int:
        """Return the length of the vector."""
        return self.bias + 1 + _SHAPE_FEATURES

    @property
    def bias(self) -> int:
        """Return the index of the constant feature."""
        return self.text_dims + self.category_dims + self.tenant_dims

    def blocks(self) -> dict[str, slice]:
        """Return where each block lies in the vector."""
        text, category = self.text_dims, self.text_dims + self.category_dims
        return {
            "text": slice(0, text),
            "category": slice(text, category),
            "tenant": slice(category, self.bias),
            "bias": slice(self.bias, self.bias + 1),
            "shape": slice(self.bias + 1, self.dims),
        }

    def extract(
        self, prompt: str, *, category: str | None = None, tenant: str | None = None
    ) -> SparseFeatures:
        """Turn a request into its sparse feature vector.

        Args:
            prompt: The text the decision is about (see :func:`prompt_text`).
            category: The task category or agent; None when the request has none.
            tenant: The tenant; None leaves the tenant block empty.
        """
        text = prompt[:MAX_CHARS]
        tokens = ["#" if t[0].isdigit() else t for t in _TOKEN.findall(text.lower())]
        weights: dict[int, float] = {}
        for key in (*tokens, *(f"{a} {b}" for a, b in itertools.pairwise(tokens))):
            index, sign = _bucket(key, self.text_dims)
            weights[index] = weights.get(index, 0.0) + sign
        norm = math.sqrt(sum(v * v for v in weights.values())) or 1.0
        vector = {i: round(v / norm, _ROUND) for i, v in weights.items() if v}
        if category:
            for salt in ("a", "b"):
                index, sign = _bucket(f"category:{salt}:{category}", self.category_dims)
                at = self.text_dims + index
                vector[at] = round(vector.get(at, 0.0) + sign * math.sqrt(0.5), _ROUND)
        if tenant:
            index, _ = _bucket(f"tenant:{tenant}", self.tenant_dims)
            vector[self.text_dims + self.category_dims + index] = 1.0
        vector[self.bias] = 1.0
        for offset, value in enumerate(_shape(text, len(prompt)), start=1):
            vector[self.bias + offset] = value
        indices = tuple(sorted(i for i, v in vector.items() if v))
        return SparseFeatures.model_construct(
            space=self.id, indices=indices, values=tuple(vector[i] for i in indices)
        )


def _shape(text: str, length: int) -> list[float]:
    """Return the shape features, each centred near a typical prompt and scaled to about 1."""
    numbers = _NUMBER.findall(text)
    punctuation = len(_PUNCTUATION.findall(text))
    return [
        _clip((math.log1p(length) - 5.5) / 1.5),
        _clip(math.log1p(len(numbers)) - 1.5),
        _clip(math.log1p(text.count("\n")) - 0.5),
        _clip(math.log1p(text.count("?")) - 0.7),
        _clip(math.log1p(max((len(n) for n in numbers), default=0)) - 1.0),
        _clip(punctuation / max(1, len(text)) * 10 - 0.5),
    ]


def prompt_text(messages: Sequence[Mapping[str, Any]], *, whole: bool = False) -> str:
    """Return the text a routing decision looks at: the last user message, or all of them.

    Args:
        messages: OpenAI-style chat messages; content may be a string or a list of parts.
        whole: Join every user message (oldest first) instead of taking the last one.
    """
    texts = [_content_text(m.get("content")) for m in messages if m.get("role") == "user"]
    texts = [t for t in texts if t]
    if not texts:
        return ""
    return "\n\n".join(texts) if whole else texts[-1]


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return "\n".join(p for p in parts if isinstance(p, str) and p)
    return ""
