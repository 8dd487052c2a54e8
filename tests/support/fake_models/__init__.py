"""Fake model server speaking the OpenAI and Ollama HTTP protocols.

The only test double for model providers: a real HTTP server (Starlette on uvicorn) that tests
script per rule and that records every inference request it receives.

Example:
    with FakeModelServer() as server:
        server.add(Rule(model="llama3.2", status=429, retry_after=0.05, times=2))
        server.add(Rule(containing="weather", tool_calls=[ToolCall(name="get_weather")]))
        await litellm.acompletion(model="ollama_chat/llama3.2", api_base=server.url, ...)
        await litellm.acompletion(model="openai/gpt-4o", api_base=server.openai_url, ...)
        assert server.count(containing="weather") == 1

Rules are tried in order; the first that matches (and whose ``times`` is not used up) answers.
Unmatched requests get ``"echo: <last user message>"``. Metadata endpoints (``/v1/models``,
``/api/tags``, ``/api/show``, ``/api/version``) are answered but not recorded.

Run it as its own process (benchmarks) with ``python -m support.fake_models --port 0`` from
``tests/`` (or with ``tests/`` on ``PYTHONPATH``); the first line on stdout is ``LISTENING <url>``.
:class:`FakeModelProcess` does that for you.

Modules: ``scripting`` (rules, tool calls, requests and records), ``server`` (the server and its
HTTP app), ``replies`` (protocol-independent answers and embeddings), ``openai`` and ``ollama``
(each protocol's request and answer shapes), ``errors`` (error answers), ``process`` (the server
in its own process, and the command line).
"""

from .process import FakeModelProcess, tool_loop_rules
from .replies import fake_embedding
from .scripting import ModelRequest, RecordedCall, Rule, ToolCall
from .server import DEFAULT_MODELS, FakeModelServer

__all__ = [
    "DEFAULT_MODELS",
    "FakeModelProcess",
    "FakeModelServer",
    "ModelRequest",
    "RecordedCall",
    "Rule",
    "ToolCall",
    "fake_embedding",
    "tool_loop_rules",
]
