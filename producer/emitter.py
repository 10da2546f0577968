"""The trainer-side emitter: batch events, pack them, hand them to ZeroMQ without waiting.

Mental model: ``emit`` appends a plain list to the current batch (no pydantic, no I/O);
``flush`` packs the batch into one msgpack message and gives it to a PUSH socket with
``NOBLOCK``. ZeroMQ's own I/O thread sends it. If the consumer is absent, slow or dead, the
socket's queue fills to its high-water mark and further batches are dropped and counted:
the trainer never blocks, never raises, and memory stays bounded.

::

    trainer thread                         ZeroMQ I/O thread           simic-consumer
    emit() -> batch (list of rows)
    flush() -> packb -> send(NOBLOCK) ---> queue (SNDHWM) ---------> PULL
                 |  zmq.Again: drop + count
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import socket as _socket
import sys
import threading
import time
import weakref
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import msgpack
import zmq

from simic.schemas.codec import KINDS, MAX_MESSAGE_BYTES, SCHEMA_VERSION
from simic.schemas.endpoints import ENDPOINT_ENV, RUN_ID_ENV

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
    """A batch older than this is sent by the next ``emit()``, without waiting for ``flush()``."""
    heartbeat_interval_s: float = 5.0
    """``flush()`` adds a heartbeat (sent and dropped counts) when this long has passed since the last."""
    exit_hooks: bool = True
    """Flush and send ``run_end`` at interpreter exit and when an uncaught exception ends the program."""


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


_live: "weakref.WeakSet[Emitter]" = weakref.WeakSet()
_abandoned: list[Any] = []  # ZeroMQ objects inherited over fork: never touched, never freed, in the child
_hooks_installed = False
_hooks_lock = threading.Lock()


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

    Use it as a context manager, or call :meth:`close` at the end: that sends ``run_end``.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        run_id: str,
        rank: int = 0,
        world_size: int = 1,
        heads: Sequence[str] = (),
        config: Mapping[str, Any] | None = None,
        device: str | None = None,
        settings: EmitterSettings | None = None,
    ) -> None:
        if not isinstance(endpoint, str) or "://" not in endpoint:
            raise ValueError(f"endpoint must look like ipc:///path or tcp://host:port, got {endpoint!r}")
        if not run_id:
            raise ValueError("run_id must be a non-empty string")
        self.endpoint = endpoint
        self.run_id = run_id
        self.rank = rank
        self.world_size = world_size
        self.heads = tuple(heads)
        self.config = dict(config or {})
        self.device = device
        self.settings = settings or EmitterSettings()
        self.stats = EmitterStats()
        self._flush_hooks: list[Callable[[], None]] = []
        self._delay_ns = int(self.settings.max_batch_delay_ms * 1e6)
        self._heartbeat_ns = int(self.settings.heartbeat_interval_s * 1e9)
        self._warned: set[str] = set()
        self._closed = False
        self._new_session()
        self._open_socket()
        self.flush()
        _live.add(self)
        if self.settings.exit_hooks:
            _install_process_hooks()

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
        self._last_send_ns = _monotonic_ns()
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
        self._socket.connect(self.endpoint)

    def _after_fork(self) -> None:
        """In a forked child: leave the parent's ZeroMQ objects alone (touching them would corrupt the
        parent's) and start an own session; the child's socket opens when it first sends."""
        _abandoned.append((self._socket, self._context))
        self._socket = self._context = None
        self._new_session()

    def close(self, status: str = "ok", error: str | None = None) -> None:
        """Send what is pending and ``run_end``, then close the socket (waits at most ``linger_ms``)."""
        if self._closed:
            return
        if self._socket is None and self._seq == 1:  # a forked child that never emitted: nothing to say
            self._closed = True
            _live.discard(self)
            return
        try:
            self._run_flush_hooks()
            self.emit("run_end", step=self._step, status=status, sent=self.stats.sent + len(self._batch),
                      dropped=self.stats.dropped, error=error)
            self._send_batch()
        finally:
            self._closed = True
            _live.discard(self)
            try:
                if self._socket is not None:
                    self._socket.close(linger=self.settings.linger_ms)
                    self._context.term()
            except zmq.ZMQError as exc:  # never raise into the trainer
                log.warning("simic emitter close: %s", exc)

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
        if spec is None or not spec.field_set.issuperset(fields):
            self._refuse(kind, fields)
            return
        if self._closed:
            self.stats.dropped += 1
            return
        now = _monotonic_ns()
        self._step = step
        row = [spec.code, self._seq, now, step]
        row += [fields.get(name) for name in spec.fields]
        while row[-1] is None:
            row.pop()
        self._seq += 1
        self.stats.produced += 1
        batch = self._batch
        batch.append(row)
        if len(batch) == 1:
            self._batch_since = now
        elif len(batch) >= self.settings.max_batch_events or now - self._batch_since >= self._delay_ns:
            self._send_batch()

    def flush(self) -> None:
        """Turn ready GPU readouts into events and send the batch. Call it once per step."""
        if self._closed:
            return
        self._run_flush_hooks()
        if self._heartbeat_ns and _monotonic_ns() - self._last_send_ns >= self._heartbeat_ns:
            self.emit("heartbeat", step=self._step, sent=self.stats.sent + len(self._batch), dropped=self.stats.dropped)
        self._send_batch()

    def _send_batch(self) -> None:
        batch = self._batch
        if not batch:
            return
        self._batch = []
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
        try:
            self._socket.send(data, zmq.NOBLOCK, copy=True)
        except zmq.Again:
            self.stats.dropped += events
            return
        except zmq.ZMQError as exc:
            self.stats.dropped += events
            self._warn_once("zmq", "simic emitter send failed (%s); events are dropped and counted", exc)
            return
        self.stats.sent += events
        self.stats.batches += 1
        self.stats.bytes += len(data)
        self._last_send_ns = _monotonic_ns()

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

    def _refuse(self, kind: str, fields: Mapping[str, Any]) -> None:
        self.stats.invalid += 1
        spec = KINDS.get(kind)
        if spec is None:
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
        as torchrun sets them). Without ``SIMIC_ENDPOINT`` telemetry is off: a :class:`NullEmitter`."""
        endpoint = os.environ.get(ENDPOINT_ENV, "").strip()
        if not endpoint:
            return NullEmitter()
        kwargs.setdefault("run_id", os.environ.get(RUN_ID_ENV) or f"{_socket.gethostname()}-{os.getpid()}-{int(time.time())}")
        kwargs.setdefault("rank", int(os.environ.get("RANK", "0")))
        kwargs.setdefault("world_size", int(os.environ.get("WORLD_SIZE", "1")))
        return cls(endpoint, **kwargs)


class NullEmitter:
    """Telemetry switched off: the :class:`Emitter` interface, doing nothing, so trainers never branch."""

    endpoint = None
    run_id = ""
    rank = 0
    session = 0
    closed = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.stats = EmitterStats()

    def emit(self, kind: str, *, step: int, **fields: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self, status: str = "ok", error: str | None = None) -> None:
        pass

    def add_flush_hook(self, hook: Callable[[], None]) -> None:
        pass

    def __enter__(self) -> "NullEmitter":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _version() -> str | None:
    try:
        from importlib.metadata import version

        return version("simic-telemetry")
    except Exception:
        return None


# -- process hooks: fork, exit, uncaught exceptions -----------------------------------------------


def _close_all(status: str, error: str | None = None) -> None:
    for emitter in list(_live):
        try:
            emitter.close(status, error)
        except Exception:  # at exit, nothing may propagate
            pass


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


def _after_fork_in_child() -> None:
    for emitter in list(_live):
        if not emitter._closed:
            emitter._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
