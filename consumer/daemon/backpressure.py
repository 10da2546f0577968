"""The daemon's queue between the receiver and the pipeline, bounded in messages *and* bytes.

A count alone does not bound memory: messages may be up to ``MAX_MESSAGE_BYTES`` each. When either
bound is reached the receiver's ``put`` waits, it stops reading ZeroMQ, ZeroMQ's receive pipes fill,
and producers drop and count what does not fit (back-pressure, never growth). A single message larger
than the byte bound is still let in when the queue is empty, so nothing ever waits forever.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["ByteBoundedQueue"]


class ByteBoundedQueue(asyncio.Queue):
    """An ``asyncio.Queue`` of ``(raw bytes | None, recv_ns)`` items, full at ``maxsize`` items or ``max_bytes`` bytes."""

    def __init__(self, maxsize: int, max_bytes: int) -> None:
        super().__init__(maxsize=maxsize)
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.max_bytes = max_bytes
        self.bytes = 0
        """Bytes of the messages held now."""

    def full(self) -> bool:
        return super().full() or (self.bytes >= self.max_bytes and not self.empty())

    def _put(self, item: Any) -> None:
        raw = item[0]
        if raw is not None:
            self.bytes += len(raw)
        super()._put(item)

    def _get(self) -> Any:
        item = super()._get()
        raw = item[0]
        if raw is not None:
            self.bytes -= len(raw)
        return item
