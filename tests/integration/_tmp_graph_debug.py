import asyncio, time
from neo4j import AsyncGraphDatabase

async def test_dbg(services):
    async def one(i, hold=0.0, delay=0.0):
        await asyncio.sleep(delay)
        t = time.time()
        d = AsyncGraphDatabase.driver(services.neo4j_uri, auth=None)
        try:
            async with d.session() as s:
                r = await s.run("RETURN 1 AS one"); await r.consume()
                await asyncio.sleep(hold)
            return i, "ok", round(time.time() - t, 2)
        finally:
            await d.close()
    async def timed(coro):
        t=time.time()
        try: return await asyncio.wait_for(coro, 6)
        except Exception as e: return repr(e), round(time.time()-t,1)
    print("single hold", await timed(one(0, 1.0)))
    print("two hold 0.2", await asyncio.gather(timed(one(0, 0.2)), timed(one(1, 0.2))))
    print("two staggered", await asyncio.gather(timed(one(0, 0.5)), timed(one(1, 0, 0.2))))
    print("single again", await timed(one(0)))
