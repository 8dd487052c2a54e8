"""The write-behind queue: batches, retries after a failed write, backpressure, draining."""

from __future__ import annotations

import asyncio

from spine.platform.write_behind import WriteBehind


class Store:
    """A write function that records its batches and fails while told to."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.failing = False

    async def write(self, batch: list[int]) -> None:
        await asyncio.sleep(0)
        if self.failing:
            raise ConnectionError("the database is down")
        self.batches.append(list(batch))

    @property
    def written(self) -> list[int]:
        return [item for batch in self.batches for item in batch]


async def test_items_gathered_in_an_interval_are_written_in_one_batch() -> None:
    store = Store()
    behind = WriteBehind(store.write, what="items", interval=0.05)
    for item in range(5):
        await behind.submit(item)
    assert store.batches == [] and behind.pending == 5  # submit returns before the write
    for _ in range(100):
        if store.batches:
            break
        await asyncio.sleep(0.01)
    assert store.batches == [[0, 1, 2, 3, 4]]
    assert behind.pending == 0
    await behind.close()


async def test_flush_writes_what_is_pending_in_batches_of_the_given_size() -> None:
    store = Store()
    behind = WriteBehind(store.write, what="items", interval=10.0, batch=3)
    for item in range(7):
        await behind.submit(item)
    await behind.flush()
    assert store.written == list(range(7))
    assert all(len(batch) <= 3 for batch in store.batches)
    assert behind.pending == 0
    await behind.close()


async def test_a_failed_write_keeps_its_items_and_is_retried() -> None:
    store = Store()
    behind = WriteBehind(store.write, what="items", interval=0.01)
    store.failing = True
    await behind.submit(1)
    await behind.flush()  # never raises: the items stay pending
    assert behind.pending == 1 and store.batches == []
    await behind.submit(2)
    await asyncio.sleep(0.05)  # the writer failed at least once more and backs off
    assert behind.pending == 2
    store.failing = False
    for _ in range(100):
        if not behind.pending:
            break
        await asyncio.sleep(0.02)
    assert store.written == [1, 2]
    await behind.close()


async def test_a_full_queue_makes_the_caller_write_its_own_item() -> None:
    store = Store()
    behind = WriteBehind(store.write, what="items", interval=10.0, max_queued=2)
    for item in range(3):
        await behind.submit(item)
    assert store.batches == [[2]]  # written before submit returned: nothing dropped
    await behind.close()
    assert sorted(store.written) == [0, 1, 2]


async def test_close_drains_the_queue_and_stops_the_writer() -> None:
    store = Store()
    behind = WriteBehind(store.write, what="items", interval=10.0)
    for item in range(4):
        await behind.submit(item)
    await behind.close()
    assert store.written == [0, 1, 2, 3]
    assert behind.pending == 0
