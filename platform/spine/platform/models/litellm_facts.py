"""What LiteLLM knows about models, asked without loading LiteLLM into this process.

The router wants LiteLLM's bundled facts (prices, context windows) and the OpenAI parameters
LiteLLM passes to each model, once, at warm-up, in every process. ``import litellm`` costs
seconds and some 135 MiB that stay mapped for the life of the process, and only the processes
that call a LiteLLM-only provider (or make embeddings) need LiteLLM itself.
:func:`ask_litellm` answers each ``(provider, model)`` pair:

1. from the answers this process was given before;
2. in this process, when LiteLLM is imported here already (it costs nothing more);
3. else from a short-lived child, ``python -m spine.platform.models.litellm_facts``: the
   pairs go to its stdin as JSON, the answers come back on its stdout, and LiteLLM's memory
   goes with the child when it exits.

The answers are LiteLLM's own (:func:`~spine.platform.models.litellm_upstream.known_model_facts`
and :func:`~spine.platform.models.litellm_upstream.supported_params`, run in the child). A
child that fails or takes longer than :data:`ASK_TIMEOUT` leaves its pairs unknown (no price
from LiteLLM, no parameter check: what LiteLLM answers for a model it does not know); the
failure is logged and the next warm-up asks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from spine.platform.models.litellm_upstream import known_model_facts, supported_params

__all__ = ["ASK_TIMEOUT", "LiteLLMFacts", "ModelFacts", "answer", "ask_litellm"]

logger = logging.getLogger(__name__)

ASK_TIMEOUT = 120.0
"""Seconds the child may take; its import of LiteLLM alone takes several on a busy machine."""


@dataclass(slots=True, kw_only=True, frozen=True)
class ModelFacts:
    """LiteLLM's answers on one model; None where it does not know."""

    facts: dict[str, Any] | None = None
    params: frozenset[str] | None = None


@dataclass(slots=True, kw_only=True)
class LiteLLMFacts:
    """LiteLLM's answers on the pairs asked, read like the functions the catalog takes."""

    known: dict[tuple[str, str], ModelFacts] = field(default_factory=dict)

    def facts(self, provider: str, model: str) -> dict[str, Any] | None:
        """Prices and context window of ``model`` at ``provider``, like LiteLLM's price map."""
        return self.known.get((provider, model), ModelFacts()).facts

    def params(self, provider: str, model: str) -> frozenset[str] | None:
        """The OpenAI parameters LiteLLM passes to ``model`` at ``provider``."""
        return self.known.get((provider, model), ModelFacts()).params


# Answers already given in this process, by pair: every router of the process (tests make
# many) asks the same few pairs, and a child costs seconds of CPU.
_ANSWERED: dict[tuple[str, str], ModelFacts] = {}


def answer(provider: str, model: str) -> ModelFacts:
    """Answer one pair in this process (imports LiteLLM: seconds)."""
    return ModelFacts(
        facts=known_model_facts(provider, model), params=supported_params(provider, model)
    )


async def ask_litellm(pairs: Iterable[tuple[str, str]]) -> LiteLLMFacts:
    """Return LiteLLM's answers on ``pairs``; this process never loads LiteLLM for them."""
    wanted = sorted(set(pairs))
    missing = [pair for pair in wanted if pair not in _ANSWERED]
    if missing and "litellm" in sys.modules:
        # In a thread: LiteLLM may still be half-imported by another one, and waiting for
        # it must not block the event loop.
        _ANSWERED.update(await asyncio.to_thread(lambda: {pair: answer(*pair) for pair in missing}))
    elif missing:
        _ANSWERED.update(await _ask_child(missing))
    return LiteLLMFacts(known={pair: _ANSWERED[pair] for pair in wanted if pair in _ANSWERED})


async def _ask_child(pairs: list[tuple[str, str]]) -> dict[tuple[str, str], ModelFacts]:
    env = dict(os.environ)
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # else it downloads a price list
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
    except OSError as exc:
        logger.warning("LiteLLM's model facts are unknown: cannot start a child (%s)", exc)
        return {}
    try:
        out, err = await asyncio.wait_for(
            child.communicate(json.dumps(pairs).encode()), ASK_TIMEOUT
        )
    except (TimeoutError, asyncio.CancelledError) as exc:
        # Cancelled too (a worker stopped while it warmed up): the child never outlives us.
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        logger.warning("LiteLLM's model facts are unknown: no answer in %.0f s", ASK_TIMEOUT)
        return {}
    if child.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        logger.warning(
            "LiteLLM's model facts are unknown: the child exited %s: %s", child.returncode, tail[0]
        )
        return {}
    try:
        rows = json.loads(out)
    except ValueError:
        logger.warning("LiteLLM's model facts are unknown: the child answered no JSON")
        return {}
    return {
        (row["provider"], row["model"]): ModelFacts(
            facts=row["facts"], params=None if row["params"] is None else frozenset(row["params"])
        )
        for row in rows
    }


def main() -> None:
    """Answer the pairs of stdin (a JSON list of ``[provider, model]``) on stdout."""
    rows = []
    # Whatever LiteLLM prints goes to stderr: stdout carries the answer alone.
    with contextlib.redirect_stdout(sys.stderr):
        for provider, model in json.load(sys.stdin):
            found = answer(provider, model)
            params = None if found.params is None else sorted(found.params)
            rows.append(
                {"provider": provider, "model": model, "facts": found.facts, "params": params}
            )
    json.dump(rows, sys.stdout)


if __name__ == "__main__":
    main()
