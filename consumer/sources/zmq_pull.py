"""The live source: a ZeroMQ PULL socket read by an asyncio task.

One ``await recv()`` wakes the task; then it drains the socket with non-blocking reads until
ZeroMQ has nothing more (an await per message would cap throughput near 70k messages/s). Each
message goes into a bounded asyncio queue with its arrival time. When the queue is full the task
waits, ZeroMQ's own queues fill, and producers drop and count: back-pressure, not memory growth.
Messages larger than the codec's limit are refused by ZeroMQ itself (``MAXMSGSIZE``) before any
allocation. With a :class:`~simic.consumer.daemon.security.CurveServer` the socket is a CURVE server:
only producers holding an allowed key get through, and rejected handshakes are counted.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import zmq
import zmq.asyncio

from simic.schemas.codec import MAX_MESSAGE_BYTES
from simic.schemas.transport import ipc_path

from ..daemon.claim import in_use_error

if TYPE_CHECKING:
    from ..daemon.security import CurveServer

__all__ = ["ZmqPullSource"]


class ZmqPullSource:
    """Binds a PULL socket and feeds ``(raw, recv_ns)`` pairs into a queue."""

    def __init__(self, endpoint: str, *, receive_hwm: int = 10_000, curve: CurveServer | None = None) -> None:
        self.endpoint = endpoint
        self.receive_hwm = receive_hwm
        self.curve = curve
        self.received = 0
        self._context: zmq.asyncio.Context | None = None
        self._socket: zmq.asyncio.Socket | None = None
        self._sync: zmq.Socket | None = None

    def bind(self) -> str:
        """Bind and return the actual endpoint (``tcp://127.0.0.1:*`` becomes a real port)."""
        path = ipc_path(self.endpoint)
        if path is not None:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._context = zmq.asyncio.Context()
        sock = self._context.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, self.receive_hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.secure(sock, "events")
        self._socket = sock
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError as error:
            self.close()  # its authenticator and monitor too
            raise in_use_error(self.endpoint, error) or error from None
        self._sync = zmq.Socket.shadow(sock.underlying)
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.endpoint

    async def run(self, queue: asyncio.Queue) -> None:
        """Receive until cancelled."""
        assert self._socket is not None and self._sync is not None, "bind() first"
        sock, sync = self._socket, self._sync
        while True:
            raw = await sock.recv()
            self.received += 1
            await queue.put((raw, time.time_ns()))
            while True:
                try:
                    raw = sync.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self.received += 1
                await queue.put((raw, time.time_ns()))

    def drain_into(self, queue: asyncio.Queue) -> int:
        """Move what ZeroMQ already holds into the queue, without waiting (used at shutdown)."""
        moved = 0
        if self._sync is None:
            return moved
        while not queue.full():
            try:
                raw = self._sync.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.received += 1
            queue.put_nowait((raw, time.time_ns()))
            moved += 1
        return moved

    def close(self) -> None:
        """Stop receiving. Safe to call twice."""
        if self._socket is not None:
            self._close_socket(self._socket)
            self._socket = self._sync = None
        if self._context is not None:
            self._context.term()
            self._context = None

    def _close_socket(self, sock: zmq.Socket) -> None:
        if self.curve is not None:
            self.curve.release(sock)  # its monitor and authenticator first, or term() waits on them
        sock.close(linger=0)
