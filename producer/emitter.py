"""The trainer-side emitter: batch events, pack them, hand them to ZeroMQ without waiting.

Mental model: ``emit`` appends a plain list to the current batch (no pydantic, no I/O, no
lock); ``flush`` packs the batch into one msgpack message and gives it to a PUSH socket with
``NOBLOCK``. ZeroMQ's own I/O thread sends it. If the consumer is absent, slow or dead, the
socket's queue fills to its high-water mark and further batches are dropped and counted:
the trainer never blocks, never raises, and memory stays bounded.

A batch also leaves without the trainer: one daemon thread per process ("simic-batch-delivery")
sends any batch whose oldest event has waited ``max_batch_delay_ms``, so the events emitted just
before the trainer hangs (a stuck optimizer step, a deadlocked collective, a long evaluation)
still reach the consumer, within about ``max_batch_delay_ms``. It sends only what was emitted: it
emits nothing itself (no heartbeat), so a hung trainer still falls silent and the consumer still
says so. GPU readouts not yet turned into events (the collectors do that in ``flush()``, on the
trainer thread) stay where they are. ``EmitterSettings(background_delivery=False)`` turns it off.

::

    trainer thread                         ZeroMQ I/O thread           simic-consumer
    emit() -> batch (list of rows)
    flush() -> packb -> send(NOBLOCK) ---> queue (SNDHWM) ---------> PULL
                 |  zmq.Again: drop + count
    simic-batch-delivery thread:
      oldest row >= max_batch_delay_ms -> packb -> send(NOBLOCK) (same socket, under the send lock)

How the two threads share a batch without a lock in ``emit``: ``emit`` only appends to the current
list (``list.append`` is atomic). Every send holds the emitter's send lock. The trainer's send
swaps in a new list; the delivery thread takes rows from the front of the current one
(``rows = batch[:n]; del batch[:n]``, each one atomic call), so a row appended meanwhile lands
after ``n`` and waits for the next send: no row is lost or sent twice, and the counters of sends
(``sent``, ``dropped``, ``batches``, ``bytes``) change only under the lock.

Where the rest lives: the collector methods (``timer``, ``head_grad_norms``, ``lstm_state``, ``watch``,
...) hand their calls to the emitter's :class:`~simic.producer.collectors.emitter_collectors.Collectors`;
the delivery thread is :mod:`simic.producer.delivery`; exit, signal and fork handling is
:mod:`simic.producer.process_hooks`; the ``emit_<kind>`` methods are generated from the models into
:mod:`simic.producer._emit_kinds` (``python -m simic.producer._codegen``).

Imports: ``simic.schemas``, ``simic.producer.collectors`` (no torch at import), ``delivery``,
``process_hooks``, ``_emit_kinds``, ``sidecar`` (only with ``spawn_consumer``), msgpack and pyzmq.
"""

from __future__ import annotations

import logging
import operator
import os
import secrets
import socket as _socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import msgpack
import zmq

from simic.schemas.codec import KINDS, MAX_MESSAGE_BYTES, SCHEMA_VERSION, DecodeError, decode_message
from simic.schemas.transport import (
    CURVE_CLIENT_KEY_ENV,
    CURVE_SERVER_KEY_ENV,
    ENDPOINT_ENV,
    RUN_ID_ENV,
    CurveClientKeys,
    alerts_endpoint_for,
)
from simic.schemas.models import Alert

from . import _emit_kinds, acknowledgement, delivery, process_hooks
from .collectors.emitter_collectors import CollectorSettings, Collectors, NullGroups, clip_without_telemetry
from .collectors.grad_norms import HeadGroups
from .collectors.param_updates import NULL_PARAM_UPDATES, NullParamUpdates, ParamUpdates
from .collectors.readout import CollectorStats
from .collectors.timing import NullTimer, Timer
from .collectors.watch import NullWatch, Watch

__all__ = ["Emitter", "NullEmitter", "EmitterSettings", "EmitterStats"]

log = logging.getLogger("simic.producer")

_monotonic_ns = time.monotonic_ns


@dataclass(frozen=True)
class EmitterSettings:
    """How an :class:`Emitter` trades memory, latency and delivery. Defaults suit a trainer."""

    send_hwm: int = 1000
    """Messages ZeroMQ may queue while the consumer is away; beyond that batches are dropped."""
    linger_ms: int = 1000
    """Longest ``close()`` waits to deliver what is queued before giving it up."""
    max_batch_events: int = 256
    """A batch this large is sent at once, without waiting for ``flush()``."""
    max_batch_delay_ms: float = 100.0
    """A batch older than this is sent by the next ``emit()``, without waiting for ``flush()``; with
    ``background_delivery``, by a background thread if no ``emit()`` comes."""
    heartbeat_interval_s: float = 5.0
    """``flush()`` adds a heartbeat (sent and dropped counts) when this long has passed since the last."""
    background_delivery: bool = True
    """Send a batch whose oldest event has waited ``max_batch_delay_ms`` from a background daemon
    thread (one per process, shared by all emitters), so events reach the consumer within about
    ``max_batch_delay_ms`` even if the trainer never calls the emitter again (a hang, a deadlocked
    collective). ``emit()`` is unchanged (no lock, no signal); the thread wakes about once per
    ``max_batch_delay_ms`` and sends under the emitter's send lock. It emits nothing itself, and GPU
    readouts not yet turned into events (that happens in ``flush()``) are not touched. False: batches
    leave only from ``emit()``, ``flush()`` and ``close()``, as without it."""
    exit_hooks: bool = True
    """Flush and send ``run_end`` at interpreter exit, when an uncaught exception ends the program,
    and on SIGTERM (only when the program has no SIGTERM handler of its own; then it still dies)."""


@dataclass
class EmitterStats:
    """What an emitter did with the events it was given (counts since it started)."""

    produced: int = 0
    """Events accepted by ``emit`` (each took a sequence number)."""
    sent: int = 0
    """Events handed to ZeroMQ."""
    dropped: int = 0
    """Events produced but not handed to ZeroMQ (queue full, no consumer, closed)."""
    invalid: int = 0
    """Calls refused: unknown kind or field, or a value msgpack cannot carry. They take no sequence number."""
    batches: int = 0
    """Messages handed to ZeroMQ."""
    bytes: int = 0
    """Bytes handed to ZeroMQ."""
    delivered: int = 0
    """Of the events sent, those the consumer confirmed it received (its receipt of ``run_end``, at close)."""
    undelivered: int = 0
    """Of the events sent, those known never to have arrived (at close): no consumer ever connected (they
    sat in ZeroMQ's queue and were discarded), or the consumer's receipt counts fewer than were sent."""
    unknown: int = 0
    """Of the events sent, those whose fate is not known (at close): no receipt came within ``linger_ms``
    (a consumer far behind or of an older version, or nothing listening on the alerts endpoint).
    After ``close()``: ``sent == delivered + undelivered + unknown``."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _plain(value: Any) -> Any:
    """msgpack fallback for numpy values and CPU tensors; GPU tensors are refused (reading one syncs)."""
    if getattr(value, "is_cuda", False):
        raise TypeError("a CUDA tensor was passed to emit(); reading it here would stall the GPU: use the collectors")
    tolist = getattr(value, "tolist", None)
    if tolist is not None:
        return tolist()
    raise TypeError(f"cannot send a value of type {type(value).__name__}")


class Emitter:
    """Sends telemetry events to a ``simic-consumer`` over ZeroMQ. Never blocks, never raises.

    Args:
        endpoint: where the consumer listens, e.g. ``ipc:///run/user/1000/simic/consumer.ipc`` or
            ``tcp://127.0.0.1:5557``.
        run_id: names the training run (all ranks of a run share it).
        rank: this process's distributed rank.
        world_size: number of ranks in the run.
        heads: policy head names, recorded in ``run_start``.
        config: free-form run configuration, recorded in ``run_start``.
        device: device name, recorded in ``run_start``.
        settings: queueing and batching knobs (:class:`EmitterSettings`).
        alerts_endpoint: where the consumer publishes alerts, read by :meth:`poll_alerts`;
            ``"auto"`` derives it from ``endpoint`` as the consumer does; None: no alerts.
        spawn_consumer: start a ``simic-consumer`` sidecar when none listens at ``endpoint`` (None:
            a private one), and stop it at :meth:`close`; True, or a mapping of keyword arguments for
            :func:`simic.producer.spawn_consumer` (``{"log_dir": ...}``). Raises RuntimeError when
            it cannot start. The sidecar is :attr:`sidecar`.
        curve_server_key: the consumer's public key file (``NAME.key`` from ``simic-consumer keygen``).
            With ``curve_client_key``, events and the alerts subscription are encrypted with CurveZMQ
            and this producer proves its identity; the consumer (``run --curve-secret --curve-allow``)
            must hold this producer's public key in its allow-list, or it receives nothing from it
            (the emitter does not fail: undelivered events are dropped and counted, as with no consumer).
        curve_client_key: this producer's secret key file (``NAME.key_secret``). Both keys are read
            once, here; an unreadable or malformed file raises ValueError.

    Use it as a context manager, or call :meth:`close` at the end: that sends ``run_end``.
    """

    sidecar = None
    """The consumer started by ``spawn_consumer`` (a :class:`simic.producer.Sidecar`), else None."""

    def __init__(
        self,
        endpoint: str | None,
        *,
        run_id: str,
        rank: int = 0,
        world_size: int = 1,
        heads: Sequence[str] = (),
        config: Mapping[str, Any] | None = None,
        device: str | None = None,
        settings: EmitterSettings | None = None,
        alerts_endpoint: str | None = "auto",
        spawn_consumer: bool | Mapping[str, Any] = False,
        curve_server_key: str | os.PathLike[str] | None = None,
        curve_client_key: str | os.PathLike[str] | None = None,
    ) -> None:
        if not (spawn_consumer and endpoint is None) and (not isinstance(endpoint, str) or "://" not in endpoint):
            raise ValueError(f"endpoint must look like ipc:///path or tcp://host:port, got {endpoint!r}")
        if not run_id:
            raise ValueError("run_id must be a non-empty string")
        self._curve: CurveClientKeys | None = None
        if curve_server_key is not None or curve_client_key is not None:
            if curve_server_key is None or curve_client_key is None:
                raise ValueError(f"curve_server_key and curve_client_key go together ({CURVE_SERVER_KEY_ENV}, {CURVE_CLIENT_KEY_ENV})")
            if spawn_consumer:
                raise ValueError("curve keys are for a consumer started with --curve-secret; a spawned sidecar is private (ipc) and has none")
            self._curve = CurveClientKeys.load(curve_server_key, curve_client_key)
        if spawn_consumer:
            from .sidecar import spawn_consumer as _spawn

            _plain_config(config or {})  # a bad config raises before a process is started
            self.sidecar = _spawn(endpoint, **({} if spawn_consumer is True else dict(spawn_consumer)))
            endpoint = self.sidecar.endpoint
            if alerts_endpoint == "auto" and self.sidecar.alerts_endpoint:
                alerts_endpoint = self.sidecar.alerts_endpoint
        self.endpoint = endpoint
        self.alerts_endpoint = alerts_endpoint_for(endpoint) if alerts_endpoint == "auto" else alerts_endpoint
        self.run_id = run_id
        self.rank = rank
        self.world_size = world_size
        self.heads = tuple(heads)
        self.config = _plain_config(config or {})
        self.device = device
        self.settings = settings or EmitterSettings()
        self.stats = EmitterStats()
        self._flush_hooks: list[Callable[[], None]] = []
        self._collectors = Collectors(self)
        self._delay_ns = int(self.settings.max_batch_delay_ms * 1e6)
        self._max_batch = self.settings.max_batch_events
        self._heartbeat_ns = int(self.settings.heartbeat_interval_s * 1e9)
        self._warned: set[str] = set()
        self._closed = False
        self._background = bool(self.settings.background_delivery)
        self._send_lock = threading.RLock()  # every send holds it (ZeroMQ sockets are not thread-safe)
        self._open_socket()  # before the session: run_start may be sent at once (max_batch_events=1)
        self._new_session()
        self.flush()
        process_hooks.add_open(self)
        process_hooks.after_fork_in_child(self._after_fork)
        if self.settings.exit_hooks:
            process_hooks.install_exit_hooks()
        if self._background:
            delivery.start()

    # -- lifecycle ------------------------------------------------------------------------------

    def _new_session(self) -> None:
        """Start a producer session: new session id, sequence from 0, ``run_start`` first in the batch."""
        self._pid = os.getpid()
        self.session = secrets.randbits(63)
        self.stats = EmitterStats()
        self._seq = 0
        self._step = 0
        self._batch: list[list[Any]] = []
        self._batch_since = 0
        self._packer = msgpack.Packer(default=_plain)
        self._last_send_ns = self._last_heartbeat_ns = _monotonic_ns()
        torch = sys.modules.get("torch")
        self.emit(
            "run_start",
            step=0,
            host=_socket.gethostname()[:128] or "unknown",
            pid=self._pid,
            world_size=self.world_size,
            torch_version=getattr(torch, "__version__", None),
            device=self.device,
            heads=list(self.heads),
            config=self.config,
            producer_version=_version(),
        )

    def _open_socket(self) -> None:
        self._context = zmq.Context(io_threads=1)
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, self.settings.send_hwm)
        self._socket.setsockopt(zmq.LINGER, self.settings.linger_ms)
        if self._curve is not None:
            self._curve.apply(self._socket)
        self._peer = acknowledgement.Peer(self._socket)  # before connecting: the first handshake is reported
        self._socket.connect(self.endpoint)
        self._alerts: zmq.Socket | None = None
        self._alerts_peer: acknowledgement.Peer | None = None
        if self.alerts_endpoint:
            self._alerts = self._context.socket(zmq.SUB)
            self._alerts.setsockopt(zmq.LINGER, 0)
            # Alerts are few; unread ones (a trainer that never polls) hold a receive buffer each, so keep few.
            self._alerts.setsockopt(zmq.RCVHWM, 100)
            if self._curve is not None:
                self._curve.apply(self._alerts)
            self._alerts.setsockopt(zmq.SUBSCRIBE, self.run_id.encode())
            self._alerts_peer = acknowledgement.Peer(self._alerts)
            self._alerts.connect(self.alerts_endpoint)
            self._alerts_since_ns = _monotonic_ns()

    def poll_alerts(self) -> list[Alert]:
        """Alerts the consumer published about this run since the last call. Never blocks.

        The consumer publishes on ``alerts_endpoint`` (by default next to ``endpoint``, see
        ``simic.schemas.transport.alerts_endpoint_for``). A trainer can checkpoint or stop on a
        critical one: ``if any(a.severity == "critical" and not a.cleared for a in emitter.poll_alerts()): ...``
        """
        alerts: list[Alert] = []
        sock = getattr(self, "_alerts", None)
        if sock is None or self._closed:
            return alerts
        for _ in range(1000):
            try:
                topic, raw = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            except (zmq.ZMQError, ValueError):
                break
            try:
                decoded = decode_message(raw)
            except DecodeError:
                continue
            alerts.extend(event for event in decoded.events if isinstance(event, Alert) and event.run_id == self.run_id)
        return alerts

    def _after_fork(self) -> None:
        """In a forked child (called by :mod:`~simic.producer.process_hooks`): leave the parent's ZeroMQ
        and CUDA objects alone (touching them would corrupt the parent's) and, when open, start an own
        session; the child's socket opens when it first sends.

        The send lock is new (the parent's delivery thread may have held it at the fork). With
        background delivery the child's first ``emit`` sends at once: that opens the child's socket
        and starts the child's delivery thread (threads do not survive a fork), so a child that
        emits and then hangs still delivers. A child that never emits (a data-loader worker) opens
        nothing and starts nothing."""
        self._collectors.after_fork()
        if self._closed:
            return
        self._send_lock = threading.RLock()
        peers = [peer.monitor for peer in (getattr(self, "_peer", None), getattr(self, "_alerts_peer", None)) if peer is not None]
        process_hooks.keep_inherited(self._socket, getattr(self, "_alerts", None), self._context, *peers)
        self._socket = self._context = self._alerts = self._peer = self._alerts_peer = None
        self._new_session()
        if self._background:
            self._batch_since = _monotonic_ns() - self._delay_ns  # due: the next emit sends

    def close(self, status: str = "ok", error: str | None = None) -> None:
        """Send what is pending and ``run_end``, then close the socket (waits at most ``linger_ms``)."""
        if self._closed:
            return
        if self._socket is None and self._seq == 1:  # a forked child that never emitted: nothing to say
            self._closed = True
            process_hooks.discard_open(self)
            return
        self._closing = True  # the delivery thread leaves this emitter alone from here on
        # From here on a full queue is waited for, up to linger_ms in all: the last events (the
        # one showing the fault, and run_end with the counts) matter most.
        self._close_deadline_ns = _monotonic_ns() + self.settings.linger_ms * 1_000_000
        try:
            self._collectors.drain()  # GPU readouts still in flight (bounded wait): the last ones matter most
            self._run_flush_hooks()
            if getattr(self, "_alerts", None) is not None:
                acknowledgement.drain(self._alerts)  # unread alerts would leave the receipt no room
            with self._send_lock:  # waits for a background send in progress, so run_end's counts include it
                self._send_batch()  # first, so that run_end's counts are exact (a row can still be dropped while sending)
                self.emit("run_end", step=self._step, status=status, sent=self.stats.sent,
                          dropped=self.stats.dropped, error=error, readouts_dropped=self._collectors.readouts_dropped())
                self._send_batch()
        finally:
            self._closed = True
            process_hooks.discard_open(self)
            try:
                if self._socket is not None:
                    try:
                        delivered = self._account_delivery()
                    except Exception as exc:  # never raise into the trainer; the socket still closes
                        log.warning("simic emitter close: delivery not accounted: %r", exc)
                        delivered = True
                    remaining_ms = max(0, (self._close_deadline_ns - _monotonic_ns()) // 1_000_000) if delivered else 0
                    self._socket.close(linger=remaining_ms)
                    if self._alerts is not None:
                        self._alerts.close(linger=0)
                    self._context.term()
            except zmq.ZMQError as exc:  # never raise into the trainer
                log.warning("simic emitter close: %s", exc)
            if self.sidecar is not None:  # after the consumer has logged this session's end (bounded wait)
                try:
                    self.sidecar.close(after_line=f"run {self.run_id} rank {self.rank} session {self.session} ended")
                except Exception as exc:
                    log.warning("simic emitter close: stopping the sidecar consumer failed: %r", exc)

    def _account_delivery(self) -> bool:
        """At close, after ``run_end`` was sent: learn and log what became of the session's events
        (``stats.delivered``, ``undelivered``, ``unknown``; see :mod:`~simic.producer.acknowledgement`).
        Waits, up to the close deadline, for a consumer to connect if none ever did, then for its
        receipt. Returns whether a consumer ever connected (else nothing is worth lingering for)."""
        deadline = self._close_deadline_ns
        connected = self._peer.wait(deadline) if self._peer is not None else True
        alerts = None
        if self._alerts_peer is not None:
            # Both sockets connected at once, to one consumer: a young emitter gives its alerts
            # socket as long as it may need to finish its handshake; later, none means nobody is there.
            young = self._alerts_since_ns + acknowledgement.HANDSHAKE_GRACE_NS
            alerts = self._alerts_peer.wait(min(deadline, young)) if connected else self._alerts_peer.check()
        receipt = None
        if connected and alerts:
            receipt = acknowledgement.await_receipt(self._alerts, run_id=self.run_id, rank=self.rank, session=self.session,
                                                    deadline_ns=deadline)
        outcome = acknowledgement.account(self.stats.sent, ever_connected=connected, receipt=receipt, endpoint=self.endpoint,
                                          alerts=alerts)
        stats = self.stats
        stats.delivered, stats.undelivered, stats.unknown = outcome.delivered, outcome.undelivered, outcome.unknown
        where = f"run {self.run_id!r} rank {self.rank} session {self.session}"
        if outcome.undelivered:
            log.warning("simic emitter: %d of %d events of %s were never delivered: %s", outcome.undelivered, stats.sent, where,
                        outcome.why)
        elif outcome.unknown:
            log.info("simic emitter: %d events of %s sent, delivery not confirmed: %s", stats.sent, where, outcome.why)
        else:
            log.info("simic emitter: %d events of %s delivered, %s", outcome.delivered, where, outcome.why)
        for peer in (self._peer, self._alerts_peer):
            if peer is not None:
                peer.close()
        return connected

    def __enter__(self) -> "Emitter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("interrupted")
        else:
            self.close("error", error=f"{exc_type.__name__}: {exc}"[:4096])

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the hot path ---------------------------------------------------------------------------

    def emit(self, kind: str, *, step: int, **fields: Any) -> None:
        """Add one event to the current batch. Fields are the kind's payload fields (see ``simic.schemas``)."""
        spec = KINDS.get(kind)
        if type(step) is not int:
            step = _as_step(step)
        if spec is None or step is None or not spec.field_set.issuperset(fields):
            self._refuse(kind, fields, step)
            return
        if self._closed:
            self.stats.dropped += 1
            return
        now = _monotonic_ns()
        row = [spec.code, self._seq, now, step, *map(fields.get, spec.fields)]
        while row[-1] is None:
            row.pop()
        self._append(row, step, now)

    def _append(self, row: list[Any], step: int, now: int) -> None:
        """Add a built row to the batch (it took sequence number ``self._seq``); send when due."""
        self._step = step
        self._seq += 1
        self.stats.produced += 1
        batch = self._batch
        batch.append(row)
        if len(batch) == 1:
            self._batch_since = now
        if len(batch) >= self._max_batch or now - self._batch_since >= self._delay_ns:
            self._send_batch()

    # emit_<kind>(step=..., **fields): one per event kind, generated from the models (producer/_emit_kinds.py)
    emit_run_start = _emit_kinds.emit_run_start
    emit_step_timing = _emit_kinds.emit_step_timing
    emit_head_grad_norms = _emit_kinds.emit_head_grad_norms
    emit_lstm_health = _emit_kinds.emit_lstm_health
    emit_ppo_update = _emit_kinds.emit_ppo_update
    emit_profiler_trace = _emit_kinds.emit_profiler_trace
    emit_heartbeat = _emit_kinds.emit_heartbeat
    emit_run_end = _emit_kinds.emit_run_end
    emit_alert = _emit_kinds.emit_alert
    emit_metrics = _emit_kinds.emit_metrics
    emit_episodes = _emit_kinds.emit_episodes
    emit_param_updates = _emit_kinds.emit_param_updates
    emit_delivery_receipt = _emit_kinds.emit_delivery_receipt

    def flush(self) -> None:
        """Turn ready GPU readouts into events and send the batch. Call it once per step."""
        if self._closed:
            return
        self._run_flush_hooks()
        now = _monotonic_ns()
        if self._heartbeat_ns and now - max(self._last_send_ns, self._last_heartbeat_ns) >= self._heartbeat_ns:
            self._last_heartbeat_ns = now
            self.emit("heartbeat", step=self._step, sent=self.stats.sent, dropped=self.stats.dropped,
                      readouts_dropped=self._collectors.readouts_dropped())
        self._send_batch()

    def _send_batch(self) -> None:
        if not self._batch:
            return
        with self._send_lock:
            batch = self._batch
            if not batch:  # the delivery thread sent it meanwhile
                return
            self._batch = []
            self._send_rows(batch)

    def _deliver_in_background(self) -> bool:
        """Delivery thread: send the rows pending now. False when the trainer holds the send lock
        (it is sending them itself); never waits for the lock, never raises into the thread."""
        lock = self._send_lock
        if not lock.acquire(blocking=False):
            return False
        try:
            if self._closing or self._socket is None:  # closing: close() sends; None: a forked child's own thread opens it
                return True
            batch = self._batch
            n = len(batch)
            if n:
                rows = batch[:n]
                del batch[:n]  # a row the trainer appends meanwhile lands after n: it stays for the next send
                self._send_rows(rows)
            return True
        finally:
            lock.release()

    def _send_rows(self, batch: list[list[Any]]) -> None:
        """Pack rows into one message and send it (split when it cannot be packed whole). Under the send lock."""
        try:
            data = self._packer.pack([SCHEMA_VERSION, self.run_id, self.rank, self.session, batch])
        except Exception:
            self._send_rows_apart(batch)
            return
        if len(data) > MAX_MESSAGE_BYTES:
            self._send_rows_apart(batch)
            return
        self._send(data, len(batch))

    def _send(self, data: bytes, events: int) -> None:
        if self._socket is None:
            self._open_socket()
            if self._background:  # a forked child's first send: its delivery thread starts here
                delivery.start()
        try:
            self._socket.send(data, zmq.NOBLOCK, copy=True)
        except zmq.Again:
            if not self._wait_for_room():
                self.stats.dropped += events
                return
            self._send(data, events)
            return
        except zmq.ZMQError as exc:
            self.stats.dropped += events
            self._warn_once("zmq", "simic emitter send failed (%s); events are dropped and counted", exc)
            return
        self.stats.sent += events
        self.stats.batches += 1
        self.stats.bytes += len(data)
        self._last_send_ns = _monotonic_ns()

    _close_deadline_ns = 0
    _closing = False

    def _wait_for_room(self) -> bool:
        """While closing (only then), wait for queue room until the close deadline."""
        remaining_ms = (self._close_deadline_ns - _monotonic_ns()) // 1_000_000
        if remaining_ms <= 0:
            return False
        try:
            return bool(self._socket.poll(remaining_ms, zmq.POLLOUT))
        except zmq.ZMQError:
            return False

    def _send_rows_apart(self, batch: list[list[Any]]) -> None:
        """Slow path: a batch that cannot be packed whole. Keep every row that can be sent."""
        good: list[list[Any]] = []
        for row in batch:
            try:
                size = len(self._packer.pack(row))
            except Exception as exc:
                self.stats.invalid += 1
                self.stats.dropped += 1
                self._warn_once(f"pack{row[0]}", "simic emitter: event not sent, %s", exc)
                continue
            if size > MAX_MESSAGE_BYTES // 2:
                self.stats.invalid += 1
                self.stats.dropped += 1
                self._warn_once(f"size{row[0]}", "simic emitter: event of %d bytes is too large, not sent", size)
                continue
            good.append(row)
        half = max(1, len(good) // 2)
        for chunk in (good[:half], good[half:]):
            if chunk:
                data = self._packer.pack([SCHEMA_VERSION, self.run_id, self.rank, self.session, chunk])
                if len(data) > MAX_MESSAGE_BYTES and len(chunk) > 1:
                    self._send_rows_apart(chunk)
                else:
                    self._send(data, len(chunk))

    def _refuse(self, kind: str, fields: Mapping[str, Any], step: Any) -> None:
        with self._send_lock:  # a send (the delivery thread's too) may count an unpackable row as invalid
            self.stats.invalid += 1
        spec = KINDS.get(kind)
        if step is None:
            self._warn_once(f"step:{kind}", "simic emitter: step must be an integer (%s not sent)", kind)
        elif spec is None:
            self._warn_once(f"kind:{kind}", "simic emitter: unknown event kind %r (known: %s)", kind, ", ".join(KINDS))
        else:
            unknown = sorted(set(fields) - spec.field_set)
            self._warn_once(f"fields:{kind}", "simic emitter: %s has no field(s) %s (fields: %s)", kind, unknown, ", ".join(spec.fields))

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned and len(self._warned) < 100:
            self._warned.add(key)
            log.warning(message, *args)

    # -- extension point for collectors ---------------------------------------------------------

    def add_flush_hook(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` at the start of every ``flush()`` and at ``close()`` (collectors turn ready readouts into events there)."""
        self._flush_hooks.append(hook)

    def _run_flush_hooks(self) -> None:
        for hook in self._flush_hooks:
            try:
                hook()
            except Exception as exc:  # a collector bug must not reach the trainer
                self._warn_once(f"hook:{hook!r}", "simic emitter: flush hook failed: %r", exc)

    # -- the collectors: GPU measurements that never wait (the emitter's Collectors do the work) ---

    def configure_collectors(self, settings: CollectorSettings) -> None:
        """Set ring and timer bounds. Call before the first collector call (later calls raise ValueError)."""
        self._collectors.configure(settings)

    @property
    def collector_stats(self) -> CollectorStats:
        """Counts of readouts submitted, resolved, dropped, pending and of failures."""
        return self._collectors.stats

    def head_groups(self, heads: Mapping[str, Any], *, params: Any = None) -> HeadGroups:
        """Resolve heads once (see :class:`~simic.producer.collectors.grad_norms.HeadGroups`). Raises ValueError."""
        return self._collectors.head_groups(heads, params=params)

    def timer(self, name: str, *, step: int | None = None, stream: Any = None, device: Any = None) -> Timer:
        """A timer for the phase ``name``, recording on ``stream`` (default: the current CUDA stream).

        Host timing (``clock="cpu"``) when ``device="cpu"``, when CUDA is unavailable, or when the
        trainer never imported torch. Use ``start()``/``stop(step)`` or ``with emitter.timer(name, step=s):``.
        """
        return self._collectors.timer(name, step=step, stream=stream, device=device)

    def head_grad_norms(
        self,
        step: int,
        heads: Any,
        *,
        stage: str | None = None,
        max_norm: float | None = None,
        clip_total: Any = None,
        count_nonfinite: bool = False,
        norms: Any = None,
        samples: int | None = None,
    ) -> None:
        """Per-head and total gradient L2 norms of the current ``.grad``\\ s, read back later.

        Args:
            step: training step the event is about.
            heads: a :class:`HeadGroups` from :meth:`head_groups` (cheapest), or the mapping itself.
            stage: ``"pre_clip"`` or ``"post_clip"`` (where in the step you call this), or None.
            max_norm: the clipping threshold; with ``stage="pre_clip"`` the post-clip total is derived.
            clip_total: what ``clip_grad_norm_`` returned (device tensor or float): the pre-clip total.
            count_nonfinite: also count NaN/Inf gradient elements per head (four more fused passes;
                off by default: a NaN/Inf norm already tells which heads are non-finite).
            norms: the norms measured already, by ``groups.norms()`` or ``groups.clip_(max_norm)``
                inside a compiled or CUDA-graphed update (the ``.grad``\\ s are not read again; a
                vector from ``clip_`` carries the pre-clip total, and ``stage`` defaults to ``"pre_clip"``).
                A 2-D tensor is one such vector per row (the optimizer steps of an update, written by
                the graph into a static buffer): one event per row, in row order, from one readout.
            samples: with ``norms``: they are the root mean square of this many optimizer steps' vectors
                (summed as squares in the graph, ``(sum / samples).sqrt()``), sent as one event; with
                rows, each row is (the consumer adds ``samples`` up over the events of an update).
        """
        self._collectors.head_grad_norms(step, heads, stage=stage, max_norm=max_norm, clip_total=clip_total,
                                         count_nonfinite=count_nonfinite, norms=norms, samples=samples)

    def clip_grad_norm_(self, step: int, heads: Any, max_norm: float) -> Any:
        """``torch.nn.utils.clip_grad_norm_`` for the parameters ``heads`` covers, measured on the way.

        Clips exactly as torch does (L2, ``max_norm / (total + 1e-6)`` clamped to 1) and returns the
        pre-clip total norm as a tensor, like torch; the per-head norms come from the same
        ``_foreach_norm`` pass, so measuring costs no extra reduction. The ``head_grad_norms`` event
        (``stage="pre_clip"``, pre- and post-clip totals) follows after a later ``flush()``.

        Args:
            step: training step the event is about.
            heads: a :class:`HeadGroups` made with ``params=`` the parameters to clip (all of them:
                the total and the clip cover ``params``), or a mapping as for :meth:`head_grad_norms`.
            max_norm: the clipping threshold.

        Raises ValueError for heads that cannot be resolved (as :meth:`head_groups` does). Once the
        heads are known it always clips, also when closed or when the measurement fails (counted).
        """
        return self._collectors.clip_grad_norm_(step, heads, max_norm)

    def lstm_state(self, step: int, hidden: Any, env_mask: Any = None, *, name: str | None = None,
                   stats: Any = None) -> None:
        """Statistics of an LSTM state ``(h, c)`` (each ``(layers, envs, hidden)``), read back later.

        ``env_mask`` (``(envs,)``, bool or 0/1) keeps only the environments to include. ``name`` tells
        the states of a model with several recurrent cores apart (``"actor"``, ``"critic"``).
        ``stats``: the statistics computed already by ``lstm_stats(hidden, env_mask)`` inside a compiled
        or CUDA-graphed function (``hidden`` then only tells the shape).
        """
        self._collectors.lstm_state(step, hidden, env_mask, name=name, stats=stats)

    def ppo_update(self, step: int, **metrics: Any) -> None:
        """PPO update metrics: any numeric scalar (Python, numpy, a CPU tensor, a one-element array or
        CUDA tensor); ``entropy`` maps head -> value, or is one number for the whole policy.

        Accepted names are the ``ppo_update`` event's fields: policy_loss, value_loss, entropy,
        approx_kl, clip_fraction, ratio_min, ratio_max, explained_variance, learning_rate,
        clip_range, loss.
        """
        self._collectors.ppo_update(step, metrics)

    def metrics(self, step: int, values: Mapping[str, Any]) -> None:
        """Named scalars the trainer logged for ``step`` (a loss, an accuracy), as a ``metrics`` event.

        Values as for :meth:`ppo_update`: numbers, numpy scalars, CPU tensors or one-element CUDA tensors
        (read back later, never waited for); None is sent as missing.
        """
        self._collectors.metrics(step, values)

    def param_updates(self, step: int, heads: Any, *, optimizer: Any = None) -> ParamUpdates | NullParamUpdates:
        """Measure the update-to-weight ratio per head of the ``optimizer.step()`` inside the block::

            with emitter.param_updates(update, groups, optimizer=optimizer):
                optimizer.step()

        The optimizer steps of one ``step`` make one ``param_updates`` event (ratios and norms as root
        mean squares over them, ``samples``), sent when a call names another step, at the first
        ``flush()`` after a later step was named, or at close (see :mod:`simic.producer.collectors.param_updates`).

        Args:
            step: training step the optimizer step belongs to (a PPO loop's update number).
            heads: a :class:`HeadGroups` from :meth:`head_groups` (pass the same one every time: its
                parameter copies are allocated once), or the mapping itself.
            optimizer: the optimizer, to send its first parameter group's learning rate (when a number).

        Memory: one copy of the heads' parameters (those ``params=`` names too). The block always
        runs; a measurement that fails is counted, never raised, and the exception of a failing
        step propagates unchanged.
        """
        return self._collectors.param_updates(step, heads, optimizer=optimizer)

    def watch(self, model: Any, optimizer: Any = None, *, heads: Mapping[str, Any] | None = None, lstm: Any = None,
              clip: float | None = None, step: Any = None, timing: bool = True, update_ratio: bool = True) -> Watch:
        """Instrument a torch trainer without editing its loop (see :mod:`simic.producer.collectors.watch`).

        Args:
            model: the ``nn.Module`` being trained; its trainable parameters make up the total norm.
            optimizer: its optimizer; each ``step()`` ends a measurement (None: no per-step events).
            heads: head name -> module | parameters | ``(param, rows)``, as for :meth:`head_groups`;
                default: one head per child module with parameters (and per parameter of the model itself).
            lstm: an ``nn.LSTM`` (or GRU), or a mapping name -> module: its last state in each step is sampled.
            clip: the ``max_norm`` the trainer clips with, so the post-clip total can be derived.
            step: None: every optimizer step is a step (0, 1, 2, ...). A callable returning the trainer's own
                counter: the optimizer steps taken under one value make one step (norms: their RMS).
            timing: measure the ``train`` phase (first forward with gradients enabled after an optimizer step
                to the end of the next: forward, backward, clip, step; ``no_grad`` rollouts are left out).
            update_ratio: measure each optimizer step's update-to-weight ratio per head and send a
                ``param_updates`` event per step (as :meth:`param_updates` does). Costs one copy of the
                measured (trainable) parameters in memory and four fused passes over them per optimizer
                step: small for RL-sized models; False turns it off.

        Returns a :class:`Watch`: ``end_step()`` sends the step being built, ``close()`` also removes the hooks.
        Raises ValueError for arguments it cannot use; once installed, nothing raises into the trainer.
        """
        return self._collectors.watch(model, optimizer, heads=heads, lstm=lstm, clip=clip, step=step, timing=timing,
                                      update_ratio=update_ratio)

    def poll_readouts(self) -> None:
        """Turn ready readouts and timings into events now (``flush()`` does this too). Never waits."""
        self._collectors.poll()

    # -- construction from the environment ------------------------------------------------------

    @classmethod
    def from_env(cls, **kwargs: Any) -> "Emitter | NullEmitter":
        """An emitter configured by ``SIMIC_ENDPOINT`` and ``SIMIC_RUN_ID`` (and ``RANK``/``WORLD_SIZE``
        as torchrun sets them; CurveZMQ key files by ``SIMIC_CURVE_SERVER_KEY`` and
        ``SIMIC_CURVE_CLIENT_KEY``). Without ``SIMIC_ENDPOINT`` telemetry is off: a :class:`NullEmitter`
        (unless ``spawn_consumer`` is given: then a private sidecar is started)."""
        endpoint = os.environ.get(ENDPOINT_ENV, "").strip()
        if not endpoint and not kwargs.get("spawn_consumer"):
            return NullEmitter()
        for key, env in (("curve_server_key", CURVE_SERVER_KEY_ENV), ("curve_client_key", CURVE_CLIENT_KEY_ENV)):
            if endpoint and os.environ.get(env, "").strip():  # keys are for that consumer, not a private sidecar
                kwargs.setdefault(key, os.environ[env].strip())
        kwargs.setdefault("run_id", os.environ.get(RUN_ID_ENV) or f"{_socket.gethostname()}-{os.getpid()}-{int(time.time())}")
        kwargs.setdefault("rank", int(os.environ.get("RANK", "0")))
        kwargs.setdefault("world_size", int(os.environ.get("WORLD_SIZE", "1")))
        return cls(endpoint or None, **kwargs)


class NullEmitter:
    """Telemetry switched off: the :class:`Emitter` interface, doing nothing, so trainers never branch.

    Every public method of :class:`Emitter` is here with the same parameters (a test holds them equal);
    ``clip_grad_norm_`` still clips and ``param_updates`` still runs its block, as the trainer expects.
    """

    endpoint = None
    alerts_endpoint = None
    run_id = ""
    rank = 0
    world_size = 1
    heads: tuple[str, ...] = ()
    device = None
    session = 0
    closed = False
    sidecar = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.stats = EmitterStats()
        self.config: dict[str, Any] = {}
        self.settings = EmitterSettings()

    def emit(self, kind: str, *, step: int, **fields: Any) -> None:
        pass

    # emit_<kind>: one per event kind, generated from the models (producer/_emit_kinds.py)
    emit_run_start = _emit_kinds.null_emit_run_start
    emit_step_timing = _emit_kinds.null_emit_step_timing
    emit_head_grad_norms = _emit_kinds.null_emit_head_grad_norms
    emit_lstm_health = _emit_kinds.null_emit_lstm_health
    emit_ppo_update = _emit_kinds.null_emit_ppo_update
    emit_profiler_trace = _emit_kinds.null_emit_profiler_trace
    emit_heartbeat = _emit_kinds.null_emit_heartbeat
    emit_run_end = _emit_kinds.null_emit_run_end
    emit_alert = _emit_kinds.null_emit_alert
    emit_metrics = _emit_kinds.null_emit_metrics
    emit_episodes = _emit_kinds.null_emit_episodes
    emit_param_updates = _emit_kinds.null_emit_param_updates
    emit_delivery_receipt = _emit_kinds.null_emit_delivery_receipt

    def flush(self) -> None:
        pass

    def poll_alerts(self) -> list[Alert]:
        return []

    def close(self, status: str = "ok", error: str | None = None) -> None:
        self.closed = True

    def add_flush_hook(self, hook: Callable[[], None]) -> None:
        pass

    def __enter__(self) -> "NullEmitter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        pass

    # -- the collectors, doing nothing (no torch) -------------------------------------------------

    def configure_collectors(self, settings: CollectorSettings) -> None:
        pass

    @property
    def collector_stats(self) -> CollectorStats:
        return CollectorStats()

    def head_groups(self, heads: Mapping[str, Any], *, params: Any = None) -> NullGroups:
        return NullGroups(heads, None if params is None else list(params))

    def timer(self, name: str, *, step: int | None = None, stream: Any = None, device: Any = None) -> NullTimer:
        return NullTimer(name, step)

    def head_grad_norms(
        self,
        step: int,
        heads: Any,
        *,
        stage: str | None = None,
        max_norm: float | None = None,
        clip_total: Any = None,
        count_nonfinite: bool = False,
        norms: Any = None,
        samples: int | None = None,
    ) -> None:
        pass

    def clip_grad_norm_(self, step: int, heads: Any, max_norm: float) -> Any:
        """Telemetry off: clips as ``torch.nn.utils.clip_grad_norm_`` over the heads' parameters."""
        return clip_without_telemetry(heads, max_norm)

    def lstm_state(self, step: int, hidden: Any, env_mask: Any = None, *, name: str | None = None,
                   stats: Any = None) -> None:
        pass

    def ppo_update(self, step: int, **metrics: Any) -> None:
        pass

    def metrics(self, step: int, values: Mapping[str, Any]) -> None:
        pass

    def param_updates(self, step: int, heads: Any, *, optimizer: Any = None) -> NullParamUpdates:
        """Telemetry off: a block that only runs its body."""
        return NULL_PARAM_UPDATES

    def watch(self, model: Any, optimizer: Any = None, *, heads: Mapping[str, Any] | None = None, lstm: Any = None,
              clip: float | None = None, step: Any = None, timing: bool = True, update_ratio: bool = True) -> NullWatch:
        return NullWatch()

    def poll_readouts(self) -> None:
        pass


_VERSION_UNKNOWN = object()
_version_cache: Any = _VERSION_UNKNOWN


def _version() -> str | None:
    # Looked up once: a forked child starts its session from the at-fork hook and must not do file I/O there.
    global _version_cache
    if _version_cache is _VERSION_UNKNOWN:
        try:
            from importlib.metadata import version

            _version_cache = version("simic-telemetry")
        except Exception:
            _version_cache = None
    return _version_cache


def _as_step(step: Any) -> int | None:
    """An integer step from numpy or CPU torch integers; None for anything else (CUDA tensors too:
    reading one would stall the GPU)."""
    if isinstance(step, bool) or getattr(step, "is_cuda", False):
        return None
    try:
        return operator.index(step)
    except TypeError:
        return None


def _plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The run config as JSON-like data (paths, enums and other objects become strings), so
    ``run_start`` can always be sent. Checked once, at construction."""
    import json

    try:
        return json.loads(json.dumps(dict(config), default=str, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config must be a mapping of JSON-like values: {exc}") from None
