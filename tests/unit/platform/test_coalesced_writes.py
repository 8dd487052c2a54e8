"""A connection's writes made in one turn of the event loop leave as one, in order."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from spine.platform.app.api.serving import CoalescedWrites


class Socket:
    """What reaches the socket: one entry per send."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return f"info:{name}"


def coalesced(socket: Socket) -> CoalescedWrites:
    return CoalescedWrites(cast("asyncio.Transport", socket), asyncio.get_running_loop())


async def test_writes_in_one_turn_leave_together_and_a_lone_one_at_the_turns_end() -> None:
    socket = Socket()
    writes = coalesced(socket)
    writes.write(b"head ")
    writes.write(b"body")
    assert socket.sent == [b"head body"]  # the second write takes the first with it at once
    writes.write(b"chunk")
    assert socket.sent == [b"head body"]  # held till the end of this turn
    await asyncio.sleep(0)
    assert socket.sent == [b"head body", b"chunk"]
    await asyncio.sleep(0)
    assert socket.sent == [b"head body", b"chunk"]  # sent once, never again


async def test_writelines_and_close_keep_the_order_of_writes() -> None:
    socket = Socket()
    writes = coalesced(socket)
    writes.write(b"1")
    writes.writelines([b"2", b"3"])
    writes.write(b"4")
    writes.close()
    assert socket.sent == [b"123", b"4"] and socket.closed
    await asyncio.sleep(0)
    assert socket.sent == [b"123", b"4"]
    assert writes.get_extra_info("peername") == "info:peername"  # the rest is the socket's


async def test_what_is_held_for_a_closed_connection_is_dropped() -> None:
    socket = Socket()
    writes = coalesced(socket)
    writes.write(b"late")
    socket.closed = True
    await asyncio.sleep(0)
    assert socket.sent == []
