import json, time
import pytest
from spine.platform.db import Database
from spine.platform.tasks import TaskStore
from spine.platform.files import FileStore
from spine.platform.batches import Batches
from spine.platform.keys import Principal

class D:
    async def publish(self, tasks, *, stalled=False): return len(tasks)
    async def cancel(self, task_id, *, principal): raise NotImplementedError

async def test_size(pg_url):
    db = Database(pg_url); await db.migrate()
    b = Batches(db, tasks=TaskStore(db), files=FileStore(db), dispatcher=D())
    n = 50_000
    content = "\n".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "llama3.2", "messages": [{"role": "user", "content": f"question number {i}"}]}}) for i in range(n)).encode()
    p = Principal(key_id="k", tenant="t", role="member")
    t = time.perf_counter()
    batch = await b.create_from_jsonl(content, principal=p)
    print("\nPG create", f"{time.perf_counter()-t:.1f}s")
    t = time.perf_counter()
    await b.get(batch.id, principal=p)
    print(f"{time.perf_counter()-t:.3f}s progress read")
    async with db.transaction() as conn:
        import sqlalchemy as sa
        await conn.execute(sa.text("UPDATE tasks SET state='succeeded', result='{\"usage\": {\"prompt_tokens\": 1}}'"))
    t = time.perf_counter()
    done = await b.get(batch.id, principal=p)
    print(f"{time.perf_counter()-t:.3f}s finalize", done.status, done.request_counts)
    await db.dispose()
