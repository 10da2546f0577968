"""Alerts published on a ZeroMQ PUB socket, for trainers (``Emitter.poll_alerts``) and other tools,
and the delivery receipts that tell a closing producer what arrived (``Emitter.close``).

Each alert or receipt is a two-part message: the run id (the subscription topic, so a trainer
subscribes to its own run) and the event encoded as a normal simic message. PUB never blocks: a subscriber that
does not keep up loses alerts at its high-water mark. With a
:class:`~simic.consumer.daemon.security.CurveServer` it is a CURVE server with the events socket's key:
only subscribers holding an allowed key receive anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import zmq

from simic.schemas.codec import encode_events
from simic.schemas.transport import ipc_path

from ..daemon.claim import in_use_error
from ..pipeline.contract import Batch, Stage

if TYPE_CHECKING:
    from ..daemon.security import CurveServer

__all__ = ["PubAlertSink"]


class PubAlertSink(Stage):
    """Publishes each alert and delivery receipt (two frames: run id, encoded event) without blocking.

    ``published``, ``receipts`` and ``unpublished`` count alerts and receipts; :attr:`dropped` counts the
    batches of which at least one was not published (the subscribers' high-water mark was reached)."""

    name = "alert_pub"
    quiet_while_catching_up = True

    def __init__(self, endpoint: str, *, hwm: int = 1000, curve: CurveServer | None = None) -> None:
        self.endpoint = endpoint
        self.hwm = hwm
        self.curve = curve
        self.published = 0
        """Alerts published."""
        self.receipts = 0
        """Delivery receipts published."""
        self.unpublished = 0
        """Alerts and receipts not published (a subscriber at its high-water mark)."""
        self.dropped = 0
        """Batches of which at least one alert or receipt was not published."""
        self._context: zmq.Context | None = None
        self._socket: zmq.Socket | None = None

    async def start(self) -> None:
        path = ipc_path(self.endpoint)
        if path is not None:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.SNDHWM, self.hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.secure(self._socket, "alerts")
        try:
            self._socket.bind(self.endpoint)
        except zmq.ZMQError as error:
            await self.close()
            raise in_use_error(self.endpoint, error, role="alerts endpoint") or error from None
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    async def consume(self, batch: Batch) -> None:
        if not (batch.alerts or batch.receipts) or self._socket is None:
            return
        lost = 0
        for alert in batch.alerts:
            try:
                self._socket.send_multipart([alert.run_id.encode(), encode_events([alert])], zmq.NOBLOCK)
                self.published += 1
            except zmq.ZMQError:
                lost += 1
        for receipt in batch.receipts:  # after the event log and the accounting: the run_end is on disk and counted
            try:
                self._socket.send_multipart([receipt.run_id.encode(), encode_events([receipt])], zmq.NOBLOCK)
                self.receipts += 1
            except zmq.ZMQError:
                lost += 1
        if lost:
            self.unpublished += lost
            self.dropped += 1

    async def close(self) -> None:
        if self._socket is not None:
            if self.curve is not None:
                self.curve.release(self._socket)  # its monitor and authenticator first, or term() waits on them
            self._socket.close(linger=0)
            self._socket = None
        if self._context is not None:
            self._context.term()
            self._context = None
