"""The fake model server in its own process (for benchmarks), and the command line it runs.

``python -m support.fake_models --port 0`` (with ``tests/`` on ``sys.path``) serves in the
foreground; the first line on stdout is ``LISTENING <url>``. :class:`FakeModelProcess` does that
for you.
"""

from __future__ import annotations

import argparse
import os
import selectors
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from ._uvicorn import wait_until_up
from .scripting import ModelRequest, Rule, ToolCall
from .server import DEFAULT_MODELS, FakeModelServer

_TESTS_DIR = Path(__file__).resolve().parents[2]
_DESCRIPTION = "Fake model server speaking the OpenAI and Ollama HTTP protocols."


class FakeModelProcess:
    """The fake server in its own process, for benchmarks; scripted only by CLI defaults.

    Args:
        port: Port to bind; 0 picks a free one.
        latency: Seconds before the first byte of every answer.
        token_delay: Seconds between streamed tokens.
        reply: Fixed reply text instead of the echo.
        embedding_dims: Default embedding size.
        tool_loop: ``(marker, tool, steps)``: a conversation containing ``marker`` is answered
            with a call of ``tool`` until ``steps - 1`` tool results are in it, then "done".
        startup_timeout: Seconds to wait for the server to answer.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        latency: float = 0.0,
        token_delay: float = 0.0,
        reply: str | None = None,
        embedding_dims: int = 384,
        tool_loop: tuple[str, str, int] | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        self.args = [
            "--port", str(port),
            "--latency-ms", str(latency * 1000),
            "--token-delay-ms", str(token_delay * 1000),
            "--embedding-dims", str(embedding_dims),
        ]  # fmt: skip
        if reply is not None:
            self.args += ["--reply", reply]
        if tool_loop is not None:
            self.args += ["--tool-loop", ":".join(map(str, tool_loop))]
        self.startup_timeout = startup_timeout
        self.url = ""
        self.process: subprocess.Popen[str] | None = None

    @property
    def openai_url(self) -> str:
        """OpenAI-compatible base URL (``<url>/v1``)."""
        return f"{self.url}/v1"

    def start(self) -> Self:
        """Spawn the server process and wait until it answers."""
        # -P keeps the working directory off sys.path, as running the file by path used to.
        command = [sys.executable, "-P", "-m", "support.fake_models", *self.args]
        paths = [str(_TESTS_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            ready = selector.select(self.startup_timeout)
        line = self.process.stdout.readline() if ready else ""
        self.process.stdout.close()
        if not line.startswith("LISTENING "):
            self.stop()
            raise RuntimeError(f"fake model process did not start (said {line!r})")
        self.url = line.split()[1]
        wait_until_up(
            self.url,
            self.startup_timeout,
            alive=lambda: self.process is not None and self.process.poll() is None,
        )
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the process (kill it if it does not exit in ``timeout`` seconds)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
        self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the fake model server in the foreground."""
    parser = argparse.ArgumentParser(description=_DESCRIPTION)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--reply", default=None, help="fixed reply text (default: echo)")
    parser.add_argument("--embedding-dims", type=int, default=384)
    parser.add_argument("--model", action="append", help="model to list (repeatable)")
    parser.add_argument(
        "--tool-loop",
        metavar="MARKER:TOOL:STEPS",
        help="a conversation containing MARKER gets a call of TOOL until STEPS-1 tool results "
        "are in it, then the reply 'done' (an agent loop of STEPS model calls)",
    )
    args = parser.parse_args(argv)
    server = FakeModelServer(
        models=args.model or DEFAULT_MODELS,
        default_reply=args.reply,
        latency=args.latency_ms / 1000,
        token_delay=args.token_delay_ms / 1000,
        embedding_dims=args.embedding_dims,
        host=args.host,
        port=args.port,
    )
    if args.tool_loop:
        marker, tool, steps = args.tool_loop.rsplit(":", 2)
        for rule in tool_loop_rules(marker, tool, int(steps)):
            server.add(rule)
    server.serve_forever()


def tool_loop_rules(marker: str, tool: str, steps: int) -> list[Rule]:
    """Rules for an agent loop of ``steps`` model calls: a conversation containing ``marker``
    gets a call of ``tool`` until ``steps - 1`` tool results are in it, then "done"."""

    def more_steps(request: ModelRequest) -> bool:
        return sum(1 for m in request.messages if m.get("role") == "tool") < steps - 1

    return [
        Rule(containing=marker, when=more_steps, tool_calls=[ToolCall(name=tool)]),
        Rule(containing=marker, reply="done"),
    ]
