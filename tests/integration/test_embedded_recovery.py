"""A start after an unclean end recovers on its own: servers an earlier stack left running are
stopped (by its state file, or by PostgreSQL's own pid file), and the data is all there."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import asyncpg
import psutil
import pytest

from spine.platform.embedded.stack import EmbeddedStack, Endpoints, read_state, stop_stack
from support.servers import embedded_data_dir

pytestmark = pytest.mark.integration


def test_servers_of_a_stack_whose_owner_died_are_stopped_before_the_next_start(
    tmp_path: Path,
) -> None:
    with embedded_data_dir(tmp_path) as data_dir:
        # Servers that outlived their owner: started detached, then recorded as an attached
        # stack of a process that is gone (what a `spine up` killed with its watchdog leaves).
        EmbeddedStack(data_dir, ["nats"], detach=True).start()
        path = data_dir / "run" / "stack.json"
        raw = json.loads(path.read_text())
        leftover = psutil.Process(raw["servers"]["nats"]["pid"])
        raw |= {"detached": False, "owner_pid": 2**22 - 1, "owner_create_time": 1.0}
        path.write_text(json.dumps(raw))
        try:
            with EmbeddedStack(data_dir, ["nats"]) as again:
                urls = again.start()
                assert not leftover.is_running()
                assert again.pid("nats") != leftover.pid
                assert urls.nats_url is not None
                assert urls.nats_url.endswith(f":{raw['servers']['nats']['ports']['client']}")
        finally:
            if leftover.is_running():
                leftover.kill()
            stop_stack(data_dir)


async def test_a_postgres_left_in_smart_shutdown_is_stopped_and_the_next_start_works(
    tmp_path: Path,
) -> None:
    with embedded_data_dir(tmp_path) as data_dir:
        first = EmbeddedStack(data_dir, ["postgres"])
        urls: Endpoints = first.start()
        assert urls.database_url is not None
        client = await asyncpg.connect(urls.database_url)
        await client.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('row')")
        postmaster = psutil.Process(first.pid("postgres"))
        # What a killed `spine up` used to leave: SIGTERM (a smart shutdown) waiting for a
        # client that never leaves, and no record of it (the state file is gone).
        postmaster.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        assert postmaster.is_running()
        os.unlink(data_dir / "run" / "stack.json")
        assert read_state(data_dir) is None

        with EmbeddedStack(data_dir, ["postgres"]) as second:
            again = second.start()
            assert not postmaster.is_running()
            conn = await asyncpg.connect(again.database_url)
            assert await conn.fetchval("SELECT v FROM kept") == "row"
            await conn.close()
        client.terminate()  # its server is gone
