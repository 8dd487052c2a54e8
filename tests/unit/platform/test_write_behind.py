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


async def test_take_hands_out_the_matching_items_and_the_writer_skips_them() -> None:
    store = Store()
    behind = WriteBehind(store.write, what="items", interval=10.0)
    for item in range(6):
        await behind.submit(item)
    assert behind.take(lambda item: item % 2 == 0) == [0, 2, 4]
    assert behind.pending == 3
    await behind.flush()
    assert store.written == [1, 3, 5]  # in their order; the taker writes the others
    await behind.close()


async def test_take_takes_what_the_writer_gathers_for_its_next_batch() -> None:
    store = Store()
    behind = WriteBehind(store.write, what="items", interval=0.05)
    await behind.submit(1)
    await asyncio.sleep(0.01)  # the writer holds 1 while it waits for more
    await behind.submit(2)
    assert behind.take(lambda item: item == 1) == [1]
    await asyncio.sleep(0.1)
    assert store.written == [2]  # 1 is the taker's to write, and written once
    await behind.close()


async def test_take_copies_what_a_write_in_progress_holds() -> None:
    gate = asyncio.Event()
    written: list[list[int]] = []

    async def slow_write(batch: list[int]) -> None:
        await gate.wait()
        written.append(list(batch))

    behind = WriteBehind(slow_write, what="items", interval=10.0)
    for item in range(3):
        await behind.submit(item)
    flushing = asyncio.create_task(behind.flush())
    await asyncio.sleep(0.01)  # the batch [0, 1, 2] is in hand, its commit not done
    await behind.submit(3)
    # Taken from the batch in hand too (copied: its write goes on), so whoever writes them
    # with its own commit cannot commit before they are stored.
    assert behind.take(lambda item: item in (1, 3)) == [1, 3]
    gate.set()
    await flushing
    await behind.close()
    assert written == [[0, 1, 2]]


async def test_put_back_queues_again_what_the_taker_could_not_write() -> None:
    store = Store()
    behind = WriteBehind(store.write, what="items", interval=0.01, max_queued=2)
    await behind.submit(1)
    await behind.submit(2)
    taken = behind.take(lambda item: True)
    assert taken == [1, 2] and behind.pending == 0
    await asyncio.sleep(0.05)  # the writer waits for items now
    behind.put_back(taken)
    for _ in range(100):
        if not behind.pending:
            break
        await asyncio.sleep(0.02)
    assert store.written == [1, 2]  # the waiting writer was woken: no other submit came
    # Past a full queue's bound: behind the items in hand, never waiting, never dropped.
    await behind.submit(7)
    await behind.submit(8)
    behind.put_back([3])
    assert behind.pending == 3
    await behind.close()
    assert sorted(store.written) == [1, 2, 3, 7, 8]


async def test_an_item_submitted_after_the_others_is_written_behind_them_even_past_the_bound() -> (
    None
):
    store = Store()
    store.failing = True  # nothing is written: the queue fills
    behind = WriteBehind(store.write, what="items", interval=10.0, batch=2, max_queued=3)
    for item in range(3):
        await behind.submit(item)
    behind.submit_after(3)  # the queue is full: it neither waits nor writes out of turn
    behind.submit_after(4)
    assert behind.pending == 5 and store.batches == []
    store.failing = False
    await behind.flush()
    assert store.written == [0, 1, 2, 3, 4]
    await behind.close()
