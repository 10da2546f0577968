"""The consumer's end of a socket, for tests: a real ZeroMQ PULL socket that decodes what arrives."""

from __future__ import annotations

from pathlib import Path

import zmq
from zmq.utils.monitor import recv_monitor_message

from simic.schemas import Event, decode_message

RECV_TIMEOUT_S = 10.0
"""Longest wait for a message that must come, or for a peer to hang up (a hang guard: both normally
take milliseconds)."""


class Receiver:
    """The consumer's end: receives and decodes what emitters send to ``endpoint``."""

    def __init__(self, context: zmq.Context, endpoint: str | None = None) -> None:
        self.context = context
        self.socket: zmq.Socket | None = None
        self.endpoint = endpoint
        self.messages: list[bytes] = []
        self.monitor: zmq.Socket | None = None
        self.connections = 0
        """Peers connected now (the socket monitor's accepted minus disconnected, as read so far)."""

    def bind(self, endpoint: str | None = None) -> str:
        """Bind the PULL socket (a ``tcp://127.0.0.1:*`` endpoint binds to a free port), watched by a
        socket monitor from before the bind, so that no peer's connection or hang-up goes unseen."""
        self.socket = self.context.socket(zmq.PULL)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.monitor = self.socket.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self.socket.bind(endpoint or self.endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.endpoint

    def recv(self, timeout_s: float = RECV_TIMEOUT_S) -> bytes | None:
        """One message, or None when none arrives within ``timeout_s``."""
        if not self.socket.poll(int(timeout_s * 1000)):
            return None
        data = self.socket.recv()
        self.messages.append(data)
        return data

    def events_of(self, data: bytes) -> list[Event]:
        decoded = decode_message(data)
        assert decoded.errors == [], decoded.errors
        return decoded.events

    def next_events(self) -> list[Event]:
        """The events of the next message (fails when none arrives in time)."""
        data = self.recv()
        assert data is not None, f"no message within {RECV_TIMEOUT_S} s"
        return self.events_of(data)

    def until_run_end(self, sessions: int = 1) -> list[Event]:
        """Every event received until ``sessions`` run_end events have arrived."""
        events: list[Event] = []
        while sum(e.kind == "run_end" for e in events) < sessions:
            events += self.next_events()
        return events

    def drain(self) -> list[bytes]:
        """What is left once every peer has hung up: to show that senders which have closed or exited
        sent nothing more (a handful of messages, fewer than the receive high-water mark).

        Waits (hang guard ``RECV_TIMEOUT_S``) until the socket monitor has seen a disconnection for
        every connection it saw accepted. ZeroMQ reports a disconnection when it has read the
        connection to its end, and queues what it read in the same step; no quiet window is timed.
        """
        self._read_monitor(0)
        while self.connections > 0:
            assert self._read_monitor(RECV_TIMEOUT_S), f"a peer still connected after {RECV_TIMEOUT_S} s"
        got = []
        while (data := self.recv(0)) is not None:
            got.append(data)
        return got

    def _read_monitor(self, timeout_s: float) -> bool:
        """Count the monitor events waiting (waiting up to ``timeout_s`` for the first); False if none came."""
        seen = False
        while self.monitor.poll(int(timeout_s * 1000) if not seen else 0):
            event = recv_monitor_message(self.monitor)["event"]
            self.connections += 1 if event == zmq.EVENT_ACCEPTED else -1 if event == zmq.EVENT_DISCONNECTED else 0
            seen = True
        return seen

    def close(self) -> None:
        if self.monitor is not None:
            self.socket.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None


def ipc_receiver(directory: Path) -> Receiver:
    """A receiver with its own context, bound on ipc in ``directory``; ``close_all()`` ends both."""
    receiver = Receiver(zmq.Context())
    receiver.bind(f"ipc://{directory}/c.ipc")
    return receiver


def close_all(receiver: Receiver) -> None:
    receiver.close()
    receiver.context.term()
