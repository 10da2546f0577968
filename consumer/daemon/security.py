"""CurveZMQ on the consumer's sockets: the allow-list check and counted handshake failures (the key
files themselves are read and written by ``simic.schemas.transport``).

With a server key pair and a directory of allowed client public keys, the events PULL and the
alerts PUB become CURVE servers: traffic is encrypted, and only peers that hold an allowed key get
past the handshake. Keys are checked by pyzmq's ZAP authenticator (its asyncio flavour, on the
daemon's loop), one per ZeroMQ context. ``ZAP_ENFORCE_DOMAIN`` makes a socket refuse every peer
when no authenticator answers: without it libzmq would accept any client key (fail open).

Every failed handshake is counted by socket and reason from the socket's monitor events (the
authenticator never sees a peer that does not speak CURVE at all). One warning line per rejected
peer, at a bounded rate: a key refused by the allow-list is logged with the peer's address and
key; libzmq's monitor does not name the peer of the other failures, so those lines name the
socket and the reason.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Iterator

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils.monitor import parse_monitor_message

from simic.schemas.transport import KeyFileError, load_allowed_keys, read_key_file

__all__ = ["HandshakeFailures", "CurveServer", "REASONS"]

log = logging.getLogger("simic.consumer")

ZAP_DOMAIN = b"simic"

REASONS = ("key_not_allowed", "no_curve", "bad_handshake", "auth_error", "incomplete")
"""Why a handshake failed:

- ``key_not_allowed``: the peer's public key is not in the allow-list (an unknown producer or subscriber);
- ``no_curve``: the peer does not use CurveZMQ (a producer started without keys);
- ``bad_handshake``: the CURVE handshake failed (the peer trusts another server key, or sent garbage);
- ``auth_error``: the authenticator failed to answer properly (the socket refuses: fail closed);
- ``incomplete``: the peer left during the handshake. A peer without keys often notices the mismatch
  first and leaves (then the consumer sees this, not ``no_curve``); also a port scan or a timeout.
"""

_MONITORED = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


def _reason(event: int, value: int) -> str | None:
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return "key_not_allowed" if value == 400 else "auth_error"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return "no_curve"
        if value & 0xF0000000 == zmq.PROTOCOL_ERROR_ZAP_UNSPECIFIED:
            return "auth_error"
        return "bad_handshake"
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return "incomplete"
    return None


_EXPLAIN = {
    "key_not_allowed": "its key is not in the allow-list",
    "no_curve": "the peer does not use CurveZMQ (no keys configured on its side)",
    "bad_handshake": "the CurveZMQ handshake failed (the peer expects another server key, or is not a simic peer)",
    "auth_error": "the authenticator did not answer properly",
    "incomplete": "the peer left during the handshake (as a peer without CurveZMQ keys does when it sees the server wants them)",
}


class _PeerLog:
    """A warning line per peer at most once per ``interval_s``, at most ``max_lines`` lines per
    interval in all, and at most ``max_peers`` peers remembered: a flood of peers neither floods
    the log nor grows memory. Lines held back are counted in the next one."""

    def __init__(self, interval_s: float, *, max_lines: int = 10, max_peers: int = 256) -> None:
        self.interval_ns = int(interval_s * 1e9)
        self.max_lines = max_lines
        self.max_peers = max_peers
        self._last: OrderedDict[Any, int] = OrderedDict()
        self._window_ns = 0
        self._lines = 0
        self.suppressed = 0

    def warning(self, peer: Any, message: str, *args: object) -> None:
        now = time.monotonic_ns()
        if now - self._window_ns >= self.interval_ns:
            self._window_ns, self._lines = now, 0
        last = self._last.get(peer)
        if (last is not None and now - last < self.interval_ns) or self._lines >= self.max_lines:
            self.suppressed += 1
            return
        self._last[peer] = now
        self._last.move_to_end(peer)
        while len(self._last) > self.max_peers:
            self._last.popitem(last=False)
        self._lines += 1
        if self.suppressed:
            message += f" ({self.suppressed} more not logged)"
            self.suppressed = 0
        log.warning(message, *args)


class HandshakeFailures:
    """Failed handshakes by ``(socket, reason)``. Updated on the daemon's loop, read by the
    Prometheus scrape thread (as a custom collector: ``simic_handshakes_failed_total``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._sockets: list[str] = []

    def watch(self, socket: str) -> None:
        """Export every reason of ``socket`` from now on, at 0 until it happens (alert rules need the series)."""
        with self._lock:
            if socket not in self._sockets:
                self._sockets.append(socket)

    def count(self, socket: str, reason: str) -> None:
        with self._lock:
            self._counts[(socket, reason)] += 1

    def by_socket(self) -> dict[str, dict[str, int]]:
        with self._lock:
            counts = dict(self._counts)
        out: dict[str, dict[str, int]] = {}
        for (socket, reason), n in sorted(counts.items()):
            out.setdefault(socket, {})[reason] = n
        return out

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def summary_line(self) -> str:
        parts = [f"{socket}: " + ", ".join(f"{reason} {n}" for reason, n in reasons.items()) for socket, reasons in self.by_socket().items()]
        return f"failed handshakes: {self.total}" + (f" ({'; '.join(parts)})" if parts else "")

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily("simic_handshakes_failed", "CurveZMQ handshakes that failed, by socket (events, alerts) and reason.",
                                     labels=["socket", "reason"])
        with self._lock:
            counts = Counter({(socket, reason): 0 for socket in self._sockets for reason in REASONS})
            counts.update(self._counts)
        for (socket, reason), n in sorted(counts.items()):
            family.add_metric([socket, reason], n)
        yield family


class _AllowList:
    """The ZAP credentials provider: is this client key allowed? Logs the peer it refuses."""

    def __init__(self, allowed: dict[bytes, str], peer_log: _PeerLog, label: str) -> None:
        self.allowed = allowed
        self.peer_log = peer_log
        self.label = label
        self.address = ""

    def callback(self, domain: str, key: bytes) -> bool:
        name = self.allowed.get(key)
        if name is not None:
            log.debug("%s: accepted %s (%s)", self.label, self.address or "a local peer", name)
            return True
        self.peer_log.warning((self.label, self.address, key), "%s: refused a connection from %s: key %s is not in the allow-list",
                              self.label, self.address or "a local peer", key.decode("ascii", "replace"))
        return False


class _Authenticator(AsyncioAuthenticator):
    def __init__(self, context: zmq.Context, provider: _AllowList) -> None:
        super().__init__(context, log=logging.getLogger("simic.consumer.zap"))
        self.provider = provider

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # The ZAP request's address frame (the peer's IP) is not passed to the provider: keep it for the log line.
        self.provider.address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)


class CurveServer:
    """Server keys and allow-list, applied to each listening socket with :meth:`secure`.

    Args:
        secret_file: this consumer's ``NAME.key_secret`` (from ``simic-consumer keygen``).
        allow_dir: directory of the allowed peers' ``NAME.key`` files (read once, at start).
        log_interval_s: at most one warning line per rejected peer per this many seconds.
    """

    def __init__(self, secret_file: Path, allow_dir: Path, *, log_interval_s: float = 1.0) -> None:
        try:
            public, secret = read_key_file(secret_file, secret=True)
        except ValueError as error:
            raise KeyFileError(f"--curve-secret: {error}") from None
        assert secret is not None
        self.public_key = public
        self._secret_key = secret
        self.allow_dir = allow_dir
        self.allowed = load_allowed_keys(allow_dir)
        self.failures = HandshakeFailures()
        self._peer_log = _PeerLog(log_interval_s)
        self._authenticators: dict[int, tuple[_Authenticator, int]] = {}
        self._monitors: dict[int, tuple[zmq.asyncio.Socket, asyncio.Task]] = {}

    def summary_line(self) -> str:
        return (f"CurveZMQ on: server public key {self.public_key.decode()}, "
                f"{len(self.allowed)} peer key(s) allowed from {self.allow_dir}")

    def secure(self, sock: zmq.Socket, label: str) -> None:
        """Make ``sock`` a CURVE server checked against the allow-list; call before ``bind`` and
        from the daemon's running event loop (the authenticator and the monitor run on it)."""
        loop = asyncio.get_running_loop()
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self._secret_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        context = sock.context
        key = context.underlying
        authenticator, users = self._authenticators.get(key, (None, 0))
        if authenticator is None:  # ZAP is per context; the daemon gives each socket its own, so the label fits
            authenticator = _Authenticator(context, _AllowList(self.allowed, self._peer_log, label))
            authenticator.start()
            authenticator.configure_curve_callback(ZAP_DOMAIN.decode(), authenticator.provider)
        self._authenticators[key] = (authenticator, users + 1)
        address = f"inproc://simic-monitor-{sock.underlying:x}"
        sock.monitor(address, _MONITORED)
        monitor = zmq.asyncio.Context.shadow(key).socket(zmq.PAIR)
        monitor.connect(address)
        self._monitors[sock.underlying] = (monitor, loop.create_task(self._watch(monitor, label), name=f"monitor-{label}"))
        self.failures.watch(label)

    def release(self, sock: zmq.Socket) -> None:
        """Stop watching ``sock`` and, with its context's last socket, that authenticator; call
        before closing the socket (and terminating its context)."""
        watched = self._monitors.pop(sock.underlying, None)
        if watched is not None:
            monitor, task = watched
            task.cancel()
            try:
                sock.monitor(None, 0)
            except zmq.ZMQError:
                pass
            monitor.close(linger=0)
        key = sock.context.underlying
        authenticator, users = self._authenticators.pop(key, (None, 0))
        if authenticator is not None:
            if users > 1:
                self._authenticators[key] = (authenticator, users - 1)
            else:
                authenticator.stop()

    async def _watch(self, monitor: zmq.asyncio.Socket, label: str) -> None:
        try:
            while True:
                event = parse_monitor_message(await monitor.recv_multipart())
                reason = _reason(event["event"], event["value"])
                if reason is None:
                    continue
                self.failures.count(label, reason)
                if reason != "key_not_allowed":  # that one was logged with the peer's address and key
                    self._peer_log.warning((label, reason), "%s: handshake failed (%s): %s", label, reason, _EXPLAIN[reason])
        except zmq.ZMQError:  # the socket was closed under us: shutting down
            return
