"""What became of the events an emitter sent: did a consumer ever listen, and what did it receive?

ZeroMQ hides both. A PUSH socket queues messages for a peer that may never come and discards them
at close without a word; PUB/SUB says nothing about who is there. Two facts make the account that
``Emitter.close()`` gives (``EmitterStats.delivered``, ``undelivered``, ``unknown``) true:

- **Peers**, from ZeroMQ socket monitors: a completed ZMTP handshake
  (``EVENT_HANDSHAKE_SUCCEEDED``) means a consumer did connect. An events socket that never
  completed one delivered nothing: every event it took sat in its queue and is discarded at close.
- **The receipt**: a simic-consumer answers a session's ``run_end``, once it has logged and counted
  it, with a ``delivery_receipt`` on its alerts channel (topic: the run id): how many events of the
  session it received. ``close()`` waits for it up to ``linger_ms``, and only where the alerts
  socket has a peer (a plain PULL socket standing in for a consumer sends no receipt).

Imports: ``zmq`` and ``simic.schemas``; nothing of the emitter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import parse_monitor_message

from simic.schemas.codec import DecodeError, decode_message
from simic.schemas.models import DeliveryReceipt

__all__ = ["Peer", "Outcome", "await_receipt", "drain", "account"]

HANDSHAKE_GRACE_NS = 250_000_000
"""A closing emitter younger than this (250 ms since its alerts socket connected) waits, up to then,
for that socket's handshake: it connected at the same moment as the events socket, to the same
consumer, and may simply not be done. An older one that has none has nobody there."""
_MONITOR_DRAIN = 64
"""Most monitor messages read by one ``check()`` (one per connection and disconnection)."""


class Peer:
    """Watches one socket's connections through a ZeroMQ monitor (an inproc PAIR in its context).

    Only completed handshakes and disconnections are monitored: a few messages in a run, never one
    per failed reconnection attempt. ``ever_connected``: a handshake completed at some time;
    ``connected``: and no disconnection since. Read only by the thread that closes the emitter; a
    ``check()`` costs one non-blocking receive when nothing happened.
    """

    def __init__(self, socket: zmq.Socket) -> None:
        self._socket = socket
        self._monitor: zmq.Socket | None = socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self.ever_connected = False
        self.connected = False

    def check(self) -> bool:
        """Read what the monitor reported since the last call; returns ``connected``."""
        monitor = self._monitor
        for _ in range(_MONITOR_DRAIN if monitor is not None else 0):
            try:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))["event"]
            except zmq.ZMQError:  # zmq.Again: nothing more
                break
            self.connected = event == zmq.EVENT_HANDSHAKE_SUCCEEDED
            self.ever_connected |= self.connected
        return self.connected

    def wait(self, deadline_ns: int) -> bool:
        """Wait (up to the deadline) until a handshake has completed; returns ``ever_connected``."""
        while not (self.check() or self.ever_connected) and self._monitor is not None:
            remaining_ms = (deadline_ns - time.monotonic_ns()) // 1_000_000
            if remaining_ms <= 0:
                break
            try:
                self._monitor.poll(remaining_ms)
            except zmq.ZMQError:
                break
        return self.ever_connected

    def close(self) -> None:
        """Stop monitoring (before the watched socket closes)."""
        if self._monitor is None:
            return
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        self._monitor = None

    @property
    def monitor(self) -> zmq.Socket | None:
        """The monitor socket (a forked child keeps the parent's alive without touching it)."""
        return self._monitor


def await_receipt(alerts: zmq.Socket, *, run_id: str, rank: int, session: int, deadline_ns: int) -> DeliveryReceipt | None:
    """The consumer's receipt for this session from the alerts channel, or None at the deadline.
    Alerts read meanwhile are dropped (the emitter is closing: nobody polls them any more)."""
    while True:
        remaining_ms = (deadline_ns - time.monotonic_ns()) // 1_000_000
        try:
            if remaining_ms <= 0 or not alerts.poll(remaining_ms):
                return None
            frames = alerts.recv_multipart(zmq.NOBLOCK)
        except zmq.ZMQError:
            return None
        if len(frames) != 2:
            continue
        try:
            decoded = decode_message(frames[1])
        except DecodeError:
            continue
        for event in decoded.events:
            if isinstance(event, DeliveryReceipt) and (event.run_id, event.rank, event.session) == (run_id, rank, session):
                return event


def drain(alerts: zmq.Socket) -> int:
    """Read and drop what waits on the alerts socket (so the receipt finds room); returns how many."""
    count = 0
    while count < 100_000:
        try:
            alerts.recv_multipart(zmq.NOBLOCK)
        except zmq.ZMQError:
            break
        count += 1
    return count


@dataclass(frozen=True)
class Outcome:
    """The fate of the events a session handed to ZeroMQ, as far as it is known at close."""

    delivered: int
    """Confirmed received by the consumer (its receipt)."""
    undelivered: int
    """Known not to have arrived: nobody ever listened, or the receipt counts fewer than were sent."""
    unknown: int
    """Neither confirmed nor known lost: no receipt came in time."""
    why: str
    """One phrase: how the fate is known."""


def account(sent: int, *, ever_connected: bool, receipt: DeliveryReceipt | None, endpoint: str, alerts: bool | None) -> Outcome:
    """What became of ``sent`` events, from the peer seen on the events socket and the receipt."""
    if not ever_connected:
        return Outcome(0, sent, 0, f"no consumer ever connected to {endpoint}")
    if receipt is not None:
        delivered = min(sent, receipt.received)
        return Outcome(delivered, sent - delivered, 0, "confirmed by the consumer's receipt")
    if alerts is None:
        why = "no receipt without an alerts endpoint"
    elif not alerts:
        why = "nothing listens on the alerts endpoint, so no receipt could come"
    else:
        why = "the consumer sent no receipt in time (it may be far behind, or an older version)"
    return Outcome(0, 0, sent, why)
