"""The real ``spine`` command, run as a subprocess from async tests.

The API the command talks to runs in the test's event loop, so the subprocess is awaited, never
waited for with a blocking call.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.servers import BackingServices


@dataclass
class Run:
    """What one run of the command printed, and how it exited."""

    code: int
    out: str
    err: str

    @property
    def both(self) -> str:
        """Stdout then stderr, for assertion messages."""
        return self.out + self.err


def cli_env(**values: str | None) -> dict[str, str]:
    """The test process's environment without any GENAI_* setting, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENAI_")}
    env |= {"COLUMNS": "250", "NO_COLOR": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env |= {k: v for k, v in values.items() if v is not None}
    return env


def service_env(
    services: BackingServices, database_url: str, **values: str | None
) -> dict[str, str]:
    """A :func:`cli_env` that points the command at the session's servers and ``database_url``."""
    return cli_env(
        GENAI_DATABASE_URL=database_url,
        GENAI_NATS_URL=services.nats_url,
        GENAI_REDIS_URL=services.redis_url,
        GENAI_NEO4J_URI=services.neo4j_uri,
        GENAI_FALKORDB_URL=services.falkordb_url,
        **values,
    )


async def spine(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> Run:
    """Run ``spine *args`` (the installed package's CLI) in ``cwd`` and collect its output.

    Args:
        *args: The command line after ``spine``.
        env: The whole environment of the process (see :func:`cli_env`).
        cwd: Its working directory; a test's own keeps a stray ``.env`` out and ``data/`` in.
        timeout: Seconds before the process is killed and ``TimeoutError`` raised.

    Returns:
        The exit code and the decoded output.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "spine.platform.app.cli",
        *args,
        env=env,
        cwd=cwd,  # no stray .env, and data/ lands in the test's directory
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


def in_process_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """The ``spine`` command run in this process on a fresh SQLite database under ``tmp_path``.

    Returns a function that runs one command line and returns its output, failing the test on a
    non-zero exit. The commands set up logging as an entry point does: the test keeps its own.
    """
    from typer.testing import CliRunner

    from spine.platform.app.cli import _shared, app

    monkeypatch.setenv("GENAI_DATABASE_URL", f"sqlite:///{tmp_path}/genai.db")
    monkeypatch.setenv("GENAI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setattr(_shared, "configure_logging", lambda level: None)
    runner = CliRunner()

    def spine(*args: str) -> str:
        result = runner.invoke(app, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    return spine
