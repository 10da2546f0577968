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
"""

from __future__ import annotations

import atexit
import logging
import operator
import os
import secrets
import signal
import socket as _socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import msgpack
import zmq

from simic.schemas.codec import KINDS, MAX_MESSAGE_BYTES, SCHEMA_VERSION
from simic.producer.collectors.mixin import CollectorsMixin, NullCollectorsMixin
from simic.producer._kind_methods import emit_methods, null_emit_methods
from simic.schemas.codec import DecodeError, decode_message
from simic.schemas.endpoints import (
    CURVE_CLIENT_KEY_ENV,
    CURVE_SERVER_KEY_ENV,
    ENDPOINT_ENV,
    RUN_ID_ENV,
    CurveClientKeys,
    alerts_endpoint_for,
)
from simic.schemas.models import Alert

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


# Open emitters, held strongly until close(): an emitter the trainer dropped without closing (a local of
# a main() that returned) must still send its pending events and run_end at exit.
_live: "set[Emitter]" = set()
_abandoned: list[Any] = []  # ZeroMQ objects inherited over fork: never touched, never freed, in the child
_hooks_installed = False
_hooks_lock = threading.Lock()


class Emitter(CollectorsMixin):
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
        _live.add(self)
        if self.settings.exit_hooks:
            _install_process_hooks()
        if self._background:
            _start_delivery()

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
        self._socket.connect(self.endpoint)
        self._alerts: zmq.Socket | None = None
        if self.alerts_endpoint:
            self._alerts = self._context.socket(zmq.SUB)
            self._alerts.setsockopt(zmq.LINGER, 0)
            # Alerts are few; unread ones (a trainer that never polls) hold a receive buffer each, so keep few.
            self._alerts.setsockopt(zmq.RCVHWM, 100)
            if self._curve is not None:
                self._curve.apply(self._alerts)
            self._alerts.setsockopt(zmq.SUBSCRIBE, self.run_id.encode())
            self._alerts.connect(self.alerts_endpoint)

    def poll_alerts(self) -> list[Alert]:
        """Alerts the consumer published about this run since the last call. Never blocks.

        The consumer publishes on ``alerts_endpoint`` (by default next to ``endpoint``, see
        ``simic.schemas.endpoints.alerts_endpoint_for``). A trainer can checkpoint or stop on a
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
        """In a forked child: leave the parent's ZeroMQ objects alone (touching them would corrupt the
        parent's) and start an own session; the child's socket opens when it first sends.

        The send lock is new (the parent's delivery thread may have held it at the fork). With
        background delivery the child's first ``emit`` sends at once: that opens the child's socket
        and starts the child's delivery thread (threads do not survive a fork), so a child that
        emits and then hangs still delivers. A child that never emits (a data-loader worker) opens
        nothing and starts nothing."""
        self._send_lock = threading.RLock()
        _abandoned.append((self._socket, getattr(self, "_alerts", None), self._context))
        self._socket = self._context = self._alerts = None
        self._new_session()
        if self._background:
            self._batch_since = _monotonic_ns() - self._delay_ns  # due: the next emit sends

    def close(self, status: str = "ok", error: str | None = None) -> None:
        """Send what is pending and ``run_end``, then close the socket (waits at most ``linger_ms``)."""
        if self._closed:
            return
        if self._socket is None and self._seq == 1:  # a forked child that never emitted: nothing to say
            self._closed = True
            _live.discard(self)
            return
        self._closing = True  # the delivery thread leaves this emitter alone from here on
        # From here on a full queue is waited for, up to linger_ms in all: the last events (the
        # one showing the fault, and run_end with the counts) matter most.
        self._close_deadline_ns = _monotonic_ns() + self.settings.linger_ms * 1_000_000
        try:
            self._drain_readouts()  # GPU readouts still in flight (bounded wait): the last ones matter most
            self._run_flush_hooks()
            with self._send_lock:  # waits for a background send in progress, so run_end's counts include it
                self._send_batch()  # first, so that run_end's counts are exact (a row can still be dropped while sending)
                self.emit("run_end", step=self._step, status=status, sent=self.stats.sent,
                          dropped=self.stats.dropped, error=error, readouts_dropped=self._readouts_dropped())
                self._send_batch()
        finally:
            self._closed = True
            _live.discard(self)
            try:
                if self._socket is not None:
                    remaining_ms = max(0, (self._close_deadline_ns - _monotonic_ns()) // 1_000_000)
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

    def flush(self) -> None:
        """Turn ready GPU readouts into events and send the batch. Call it once per step."""
        if self._closed:
            return
        self._run_flush_hooks()
        now = _monotonic_ns()
        if self._heartbeat_ns and now - max(self._last_send_ns, self._last_heartbeat_ns) >= self._heartbeat_ns:
            self._last_heartbeat_ns = now
            self.emit("heartbeat", step=self._step, sent=self.stats.sent, dropped=self.stats.dropped,
                      readouts_dropped=self._readouts_dropped())
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
                _start_delivery()
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

    def _readouts_dropped(self) -> int | None:
        """GPU measurements dropped unread by the collectors (None when no collector ran)."""
        if self.__dict__.get("_collectors") is None:
            return None
        stats = self.collector_stats
        return stats.dropped + stats.timers_dropped

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


class NullEmitter(NullCollectorsMixin):
    """Telemetry switched off: the :class:`Emitter` interface, doing nothing, so trainers never branch."""

    endpoint = None
    run_id = ""
    rank = 0
    session = 0
    closed = False
    sidecar = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.stats = EmitterStats()

    def emit(self, kind: str, *, step: int, **fields: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def poll_alerts(self) -> list:
        return []

    def close(self, status: str = "ok", error: str | None = None) -> None:
        self.closed = True

    def add_flush_hook(self, hook: Callable[[], None]) -> None:
        pass

    def __enter__(self) -> "NullEmitter":
        return self

    def __exit__(self, *exc: object) -> None:
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


# -- process hooks: fork, exit, uncaught exceptions -----------------------------------------------


def _close_all(status: str, error: str | None = None) -> None:
    for emitter in list(_live):
        try:
            emitter.close(status, error)
        except Exception:  # at exit, nothing may propagate
            pass


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


def _on_sigterm(signum, frame) -> None:
    """SIGTERM (a scheduler's preemption, ``kill``): send what is pending and run_end, then die as
    the default action would. Installed only where the program had no handler of its own."""
    _close_all("interrupted", "SIGTERM")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _excepthook(exc_type, exc, tb) -> None:
    status = "interrupted" if issubclass(exc_type, KeyboardInterrupt) else "error"
    _close_all(status, f"{exc_type.__name__}: {exc}"[:4096])
    _previous_excepthook(exc_type, exc, tb)


_previous_excepthook = sys.excepthook


def _install_process_hooks() -> None:
    global _hooks_installed, _previous_excepthook
    with _hooks_lock:
        if _hooks_installed:
            return
        _hooks_installed = True
        atexit.register(_close_all, "exit")
        _previous_excepthook = sys.excepthook
        sys.excepthook = _excepthook
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)


# -- background delivery: one daemon thread per process ---------------------------------------------

_WAKE_MIN_NS = 500_000
"""Shortest sleep of the delivery thread (also how early a batch may be taken before it is due)."""
_WAKE_MAX_NS = 3600 * 10**9
"""Longest sleep (a huge ``max_batch_delay_ms``); a new emitter wakes the thread anyway."""
_BUSY_RETRY_NS = 1_000_000
"""Look again this soon at an emitter whose trainer held the send lock."""

_delivery_lock = threading.Lock()  # guards _delivery_thread
_delivery_wake = threading.Event()  # set: look at the emitters now (a new one, a shorter delay)
_delivery_thread: threading.Thread | None = None


def _start_delivery() -> None:
    """Start the delivery thread if it is not running (lazily: at the first emitter that wants it, and
    in a forked child at its first send); else wake it, so it sees a new emitter's delay."""
    global _delivery_thread
    with _delivery_lock:
        thread = _delivery_thread
        if thread is not None and thread.is_alive():
            _delivery_wake.set()
            return
        thread = threading.Thread(target=_deliver_forever, args=(_delivery_wake,), name="simic-batch-delivery", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # interpreter shutting down: batches leave from emit/flush/close only
            log.warning("simic emitter: background delivery not started (%s)", exc)
            return
        _delivery_thread = thread


def _background_emitters() -> list["Emitter"]:
    for _ in range(3):
        try:
            return [e for e in tuple(_live) if e._background and not e._closing]
        except RuntimeError:  # _live changed while being copied: copy again
            continue
    return []


def _deliver_forever(wake: threading.Event) -> None:
    """The delivery thread: send due batches, sleep until the next is due (or a new emitter wakes it);
    end when no emitter wants it. A daemon thread: it never keeps the interpreter alive, and at exit
    ``close()`` makes it leave each emitter alone. It never raises."""
    global _delivery_thread
    me = threading.current_thread()
    try:
        while True:
            wake.clear()
            emitters = _background_emitters()
            if not emitters:
                with _delivery_lock:
                    if not _background_emitters():  # re-checked under the lock _start_delivery takes
                        if _delivery_thread is me:
                            _delivery_thread = None
                        return
                continue
            wake.wait(_deliver_due(emitters) / 1e9)
    except BaseException:  # interpreter teardown (module globals going away): just stop
        try:
            with _delivery_lock:
                if _delivery_thread is me:
                    _delivery_thread = None
        except BaseException:
            pass


def _deliver_due(emitters: list["Emitter"]) -> int:
    """Send every batch whose oldest row has waited its emitter's delay; nanoseconds until the next
    look: when the next pending row falls due, and at least once per delay (rows that arrive in an
    empty batch are seen then, before they are due: none waits more than its delay)."""
    now = _monotonic_ns()
    wait_ns = _WAKE_MAX_NS
    for emitter in emitters:
        try:
            delay = emitter._delay_ns
            wait_ns = min(wait_ns, delay)
            if emitter._socket is None or emitter._closing:
                continue
            batch = emitter._batch
            if not batch:
                continue
            due = batch[0][2] + delay  # row[2]: the monotonic clock at emit
            if due - now <= _WAKE_MIN_NS:
                if not emitter._deliver_in_background():
                    wait_ns = min(wait_ns, _BUSY_RETRY_NS)
                    continue
                now = _monotonic_ns()
                batch = emitter._batch  # rows appended while sending
                if not batch:
                    continue
                due = batch[0][2] + delay
            wait_ns = min(wait_ns, due - now)
        except Exception as exc:  # never raise in the thread; warn once per emitter
            try:
                emitter._warn_once("background", "simic emitter: background delivery failed: %r", exc)
            except Exception:
                pass
    return max(_WAKE_MIN_NS, wait_ns)


def _after_fork_in_child() -> None:
    # Threads do not survive fork: the child's delivery thread starts with its first send. Its locks
    # are new: the parent's thread may have held them at the fork.
    global _delivery_lock, _delivery_wake, _delivery_thread
    _delivery_lock = threading.Lock()
    _delivery_wake = threading.Event()
    _delivery_thread = None
    for emitter in list(_live):
        if not emitter._closed:
            emitter._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


# emit_<kind>(step=..., **fields) methods, generated from the models (see _kind_methods).
for _name, _method in emit_methods().items():
    setattr(Emitter, _name, _method)
for _name, _method in null_emit_methods().items():
    setattr(NullEmitter, _name, _method)
del _name, _method
