import asyncio, sys, time
from pathlib import Path
from test_cli import spine, service_env

async def test_dbg(services, tmp_path):
    for n in (1, 2, 3):
        t = time.time()
        runs = await asyncio.gather(*(spine("doctor", env=service_env(services, services.database_url), cwd=tmp_path) for _ in range(n)))
        print(n, round(time.time() - t, 1), [[l for l in r.out.splitlines() if "graph" in l] for r in runs])
