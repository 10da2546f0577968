"""The consumer's end of a socket, for tests: a real ZeroMQ PULL socket that decodes what arrives."""

from __future__ import annotations

from pathlib import Path

import zmq

from simic.schemas import Event, decode_message

RECV_TIMEOUT_S = 10.0
"""Longest wait for a message that must come (a hang guard: messages normally arrive in milliseconds)."""
QUIET_S = 0.3
"""How long no message must arrive before a receiver concludes nothing more is coming."""


class Receiver:
    """The consumer's end: receives and decodes what emitters send to ``endpoint``."""

    def __init__(self, context: zmq.Context, endpoint: str | None = None) -> None:
        self.context = context
        self.socket: zmq.Socket | None = None
        self.endpoint = endpoint
        self.messages: list[bytes] = []

    def bind(self, endpoint: str | None = None) -> str:
        """Bind the PULL socket (a ``tcp://127.0.0.1:*`` endpoint binds to a free port)."""
        self.socket = self.context.socket(zmq.PULL)
        self.socket.setsockopt(zmq.LINGER, 0)
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
        """Messages received until none has come for QUIET_S."""
        got = []
        while (data := self.recv(QUIET_S)) is not None:
            got.append(data)
        return got

    def close(self) -> None:
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
