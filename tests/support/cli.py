"""The real ``spine`` command, run as a subprocess from async tests.

The API the command talks to runs in the test's event loop, so the subprocess is awaited, never
waited for with a blocking call.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

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
