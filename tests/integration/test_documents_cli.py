"""``spine docs add|list|show|delete`` and ``spine search``, run as subprocesses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from support.cli import cli_env, spine
from support.fake_models import FakeModelServer
from support.live_platform import running_platform

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_jetstream")]

NOTES = """\
# Runbook

## Disk full

Delete the oldest snapshots first, then grow the volume.
"""
CHUNK = "Runbook > Disk full\n\nDelete the oldest snapshots first, then grow the volume."


async def test_docs_add_waits_then_search_finds_it_and_delete_removes_it(
    services: Any, pg_url: str, models: FakeModelServer, tmp_path: Path
) -> None:
    notes = tmp_path / "runbook.md"
    notes.write_text(NOTES)
    async with running_platform(services, pg_url, models) as running:
        env = cli_env(GENAI_API_URL=running.url, GENAI_API_KEY=running.key)
        added = await spine(
            "docs", "add", str(notes), "--meta", "team=ops", "--meta", "year=2024", "--wait",
            env=env, cwd=tmp_path,
        )  # fmt: skip
        assert added.code == 0, added.both
        # Queued as a rule; already embedded when the worker was done before the reply was
        # built (a clean-clone CI run saw it once).
        found = re.search(
            r"document ([0-9a-f-]{36}) (?:queued|embedded): 1 chunks for nomic-embed-text",
            added.out,
        )
        assert found, added.out
        document_id = found.group(1)
        assert f"document {document_id} embedded" in added.out

        shown = await spine("docs", "show", document_id, env=env, cwd=tmp_path)
        body = json.loads(shown.out)
        assert (body["status"], body["source"], body["format"]) == (
            "embedded",
            "runbook.md",
            "markdown",
        )
        assert body["metadata"] == {"team": "ops", "year": 2024}

        hits = await spine("search", CHUNK, "--filter", "team=ops", "--json", env=env, cwd=tmp_path)
        assert hits.code == 0, hits.both
        answer = json.loads(hits.out)
        assert [h["document_id"] for h in answer["hits"]] == [document_id]
        assert answer["hits"][0]["score"] > 0.999
        table = await spine("search", CHUNK, env=env, cwd=tmp_path)
        assert "runbook.md#0" in table.out
        assert "Runbook > Disk full" in table.out
        none = await spine("search", CHUNK, "--filter", "team=dev", env=env, cwd=tmp_path)
        assert "no passages found" in none.out

        listed = await spine("docs", "list", env=env, cwd=tmp_path)
        assert document_id in listed.out
        deleted = await spine("docs", "delete", document_id, env=env, cwd=tmp_path)
        assert deleted.code == 0, deleted.both
        missing = await spine("docs", "show", document_id, env=env, cwd=tmp_path)
        assert missing.code == 1
        assert "404 not_found" in missing.err

        bad = await spine("docs", "add", str(notes), "--meta", "no-equals", env=env, cwd=tmp_path)
        assert bad.code == 1
        assert "--meta 'no-equals' must be name=value" in bad.err
