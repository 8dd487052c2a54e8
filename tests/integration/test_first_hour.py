"""The README's "first ten minutes", run as written against a running platform.

The fenced block after ``<!-- first-ten-minutes -->`` in README.md is run by bash, line for line,
with two changes only: ``make`` lines are left out (the platform already runs here, with the fake
model server as its model), and the API's port 8100 becomes the test API's port. ``.venv`` and
``data/admin.key`` are where the README expects them, in the test's own folder.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from support.cli import cli_env
from support.fake_models import FakeModelServer
from support.live_platform import running_platform

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_jetstream")]

ROOT = Path(__file__).resolve().parents[2]
MARK = "<!-- first-ten-minutes -->"
README_API = "127.0.0.1:8100"
BOUND = 30.0


def walkthrough() -> str:
    """Return the README's first-ten-minutes block."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert MARK in text, "README.md lost its first-ten-minutes block"
    fenced = text.split(MARK, 1)[1].lstrip()
    assert fenced.startswith("```bash\n"), "the mark must come just before a ```bash block"
    return fenced.removeprefix("```bash\n").split("\n```", 1)[0]


def as_script(block: str, port: int) -> str:
    """Return the block as a bash script against the API on ``port`` (``make`` lines left out)."""
    assert README_API in block
    lines = [line for line in block.splitlines() if not line.startswith("make ")]
    return "set -euo pipefail\n" + "\n".join(lines).replace(README_API, f"127.0.0.1:{port}")


def streamed_usage(out: str) -> dict[str, Any]:
    """Return the ``usage`` of the last chunk of the streamed chat in ``out``."""
    chunks = [json.loads(line[6:]) for line in out.splitlines() if line.startswith("data: {")]
    assert chunks, out
    usage = chunks[-1].get("usage")
    assert isinstance(usage, dict), chunks[-1]
    return usage


def test_the_block_leaves_out_only_make_and_changes_only_the_port() -> None:
    block = walkthrough()
    script = as_script(block, 18100)
    kept = [line for line in block.splitlines() if not line.startswith("make ")]
    assert len(script.splitlines()) == len(kept) + 1
    assert README_API not in script
    assert "make up" in block  # the step a reader starts with, left to them


async def test_the_first_ten_minutes_run_verbatim(
    services: Any, pg_url: str, models: FakeModelServer, tmp_path: Path
) -> None:
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    async with running_platform(services, pg_url, models) as running:
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "admin.key").write_text(running.key + "\n")
        port = running.url.rsplit(":", 1)[1]
        # Output to files: what was printed is there to read even when the bound is hit.
        out_path, err_path = tmp_path / "out.txt", tmp_path / "err.txt"
        with out_path.open("wb") as out_file, err_path.open("wb") as err_file:
            proc = await asyncio.create_subprocess_exec(
                "bash",
                "-c",
                as_script(walkthrough(), int(port)),
                cwd=tmp_path,
                env=cli_env(GENAI_API__PORT=port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_file,
                stderr=err_file,
            )
            try:
                await asyncio.wait_for(proc.wait(), BOUND)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        out, err = out_path.read_text(), err_path.read_text()
        tasks = (await running.client.get("/v1/tasks")).json()["data"]
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    # `spine submit --follow`: progress, then the fake model's answer.
    assert "echo: Say hello" in out
    # Both curl submissions were accepted, the bare string as {"prompt": ...}.
    assert out.count('"input":{"prompt":"Say hello"}') >= 2, out
    assert not re.search(r'"error":\s*\{', out), out
    assert len(tasks) == 3
    # `tasks list` shows whole ids; `tasks show <start of an id>` found the newest task.
    newest = tasks[0]["id"]
    assert all(task["id"] in out for task in tasks), out
    assert f'"id": "{newest}"' in out, out
    # The stream ends with its usage, never zeros.
    usage = streamed_usage(out)
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert "data: [DONE]" in out
    # The event is accepted and listed.
    assert re.search(r"event \S+ accepted: key \S+", out), out
    assert "com.example.person.hired" in out.rsplit("accepted: key", 1)[1]
