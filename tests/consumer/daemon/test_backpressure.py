"""The daemon's queue: bounded in messages and in bytes, never stuck on one large message."""

from __future__ import annotations

import asyncio

import pytest

from simic.consumer.daemon.backpressure import ByteBoundedQueue


async def test_put_waits_once_the_bytes_are_reached_and_resumes_when_they_are_taken():
    """Three 40-byte messages fit under 100 bytes' worth (the third crosses it); the fourth waits for a get."""
    queue = ByteBoundedQueue(maxsize=100, max_bytes=100)
    for _ in range(3):
        queue.put_nowait((b"x" * 40, 0))
    assert queue.full() and queue.bytes == 120
    with pytest.raises(asyncio.QueueFull):
        queue.put_nowait((b"y", 0))
    waiting = asyncio.create_task(queue.put((b"y", 1)))
    await asyncio.sleep(0)  # let the put reach its wait (a scheduling point, not a timing)
    assert not waiting.done()
    assert queue.get_nowait()[0] == b"x" * 40
    await asyncio.wait_for(waiting, timeout=10)
    assert queue.qsize() == 3 and queue.bytes == 81


async def test_the_message_count_still_bounds_and_ticks_weigh_nothing():
    """maxsize still bounds small messages; clock ticks (None) count as items but not as bytes."""
    queue = ByteBoundedQueue(maxsize=2, max_bytes=1 << 20)
    queue.put_nowait((None, 0))
    queue.put_nowait((b"ab", 0))
    assert queue.full() and queue.bytes == 2
    assert queue.get_nowait() == (None, 0) and queue.get_nowait() == (b"ab", 0) and queue.bytes == 0


def test_one_message_larger_than_the_bound_still_gets_in_alone():
    """A message over max_bytes enters an empty queue (nothing would ever make room for it) and fills it."""
    queue = ByteBoundedQueue(maxsize=10, max_bytes=8)
    assert not queue.full()
    queue.put_nowait((b"z" * 64, 0))
    assert queue.full()
    with pytest.raises(ValueError):
        ByteBoundedQueue(maxsize=10, max_bytes=0)
