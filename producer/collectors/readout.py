"""Deferred readouts: device values reach the host without the host ever waiting for the GPU.

Mental model: a collector reduces what it measures to a few values *on the device* and hands
over the resulting 0-d or 1-d tensors (no copy, no launch of its own). At ``Emitter.flush()`` the
readouts gathered since the last flush are *sealed*: one ``torch.stack`` and one ``torch.cat``
write them all into a device staging buffer, one ``non_blocking`` copy moves that into a row of a
preallocated pinned host ring, one CUDA event is recorded behind the copy. Nothing waits. A later
``flush()`` asks ``event.query()`` which rows have landed and hands each readout its values; its
resolver turns them into an event.

::

    collector:  reduce on device -> readouts.add(device, n, resolver, ctx, scalars=[...])   (per readout)
    flush():    seal: stack/cat -> stage; pinned_row[:n].copy_(stage[:n], non_blocking); event.record()
                poll: for each sealed row: event.query()? -> resolver(values) -> emit
                      not ready yet: stays pending (never waited for)
    ring full:  poll; still full -> the OLDEST sealed row is dropped, its readouts counted

Everything is allocated once per device (the staging buffer and the ring's rows), at the first
readout; a readout wider than half the staging buffer makes wider buffers once (the old ones are
read to the end, then let go). Values that are already on the host (CPU tensors) skip all this
and are resolved at once.

Streams: a batch belongs to one stream (the caller's current stream when its first readout was
handed over) and is sealed on it; a readout from another stream seals the batch first. Reused
memory is ordered on the GPU, never by waiting on the host: a stream that reuses the staging
buffer or a dropped ring row after another stream first waits for that stream's copy event
(``stream.wait_event``).
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Callable

__all__ = ["CollectorStats", "Readouts", "Resolver", "torch_module"]

log = logging.getLogger("simic.producer")

Resolver = Callable[[list, Any], None]
"""``resolver(values, context)``: turns a readout's host values into an event."""

MIN_CAPACITY = 4096
"""Float32 values a staging buffer (and each ring row) holds at least."""
MAX_CAPACITY = 1 << 20
"""Widest single readout accepted (float32 values); wider ones are refused and counted as errors."""


_torch: Any = None


def torch_module() -> Any:
    """``torch``, imported on first use (``simic.producer`` itself never imports it)."""
    global _torch
    if _torch is None:
        import torch

        _torch = torch
    return _torch


_streams: dict[tuple, Any] = {}


def current_stream(torch: Any, device: Any = None) -> Any:
    """``torch.cuda.current_stream(device)``, at a fraction of its host cost: the current stream's
    identity ``(id, device, type)`` is read through torch's own binding, and each stream's ``Stream``
    object is made once and kept (the public call builds one, and checks CUDA twice, every time)."""
    get = getattr(torch._C, "_cuda_getCurrentStream", None)
    if get is None:
        return torch.cuda.current_stream(device)
    if device is None:
        index = torch.cuda.current_device()  # initialises CUDA first, as torch's own call does
    elif type(device) is int:
        torch.cuda.init()
        index = device
    else:
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"a CUDA stream needs a CUDA device, got {device}")
        torch.cuda.init()
        index = device.index if device.index is not None else torch.cuda.current_device()
    key = get(index)
    stream = _streams.get(key)
    if stream is None:
        if len(_streams) >= 64:  # streams made and dropped in a loop: keep the table small
            _streams.clear()
        stream = _streams[key] = torch.cuda.Stream(stream_id=key[0], device_index=key[1], device_type=key[2])
    return stream


@dataclass
class CollectorStats:
    """What the GPU collectors of one emitter did (counts since it started)."""

    submitted: int = 0
    """Readouts handed over (device readouts gathered plus host readouts resolved at once)."""
    resolved: int = 0
    """Readouts whose values reached the host and were handed to their resolver."""
    dropped: int = 0
    """Device readouts dropped unread because the ring was full (those of the oldest sealed row), and LSTM
    states whose reduction at the flush failed."""
    pending: int = 0
    """Device readouts gathered or in flight right now (not yet resolved)."""
    batches: int = 0
    """Batches sealed (each: one stack, one cat, one non-blocking device-to-host copy, one CUDA event)."""
    timers_dropped: int = 0
    """Timer measurements dropped unread because too many were pending."""
    errors: int = 0
    """Collector calls or resolutions that failed; each was counted (and logged once) instead of raised."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _DeviceReadouts:
    """The pending readouts, the staging buffer and the pinned ring of one CUDA device."""

    def __init__(self, torch: Any, device: Any, capacity: int, slots: int, stats: CollectorStats,
                 on_error: Callable[[str, BaseException], None]) -> None:
        self.torch = torch
        self.device = device
        self.capacity = capacity
        self.stats = stats
        self._on_error = on_error
        self.stage = torch.empty(capacity, dtype=torch.float32, device=device)
        self.scalars: list[Any] = []  # 0-d device tensors of the batch being gathered
        self.vectors: list[Any] = []  # 1-d device tensors of the batch being gathered
        self.vector_len = 0
        self.entries: list[tuple[bool, int, int, Resolver, Any]] = []  # (vector?, start, count, resolver, context)
        self.stream: Any = None  # stream of the batch being gathered
        self.stream_key: Any = None
        self.stage_free_event: Any = None  # the last seal's copy (another stream waits for it before reuse)
        self.stage_free_stream: Any = None
        host = torch.empty((slots, capacity), dtype=torch.float32, pin_memory=True)
        self.host = host
        self.rows = list(host.unbind(0))
        self.events = [torch.cuda.Event() for _ in range(slots)]  # no timing: the cheapest record
        self.row_stream: list[Any] = [None] * slots
        self.free: deque[int] = deque(range(slots))
        self.sealed: deque[tuple[int, int, int, list]] = deque()  # (row, used, scalars, entries)
        self._current_stream = functools.partial(current_stream, torch)
        index = device.index if device.index is not None else torch.cuda.current_device()
        get = getattr(torch._C, "_cuda_getCurrentStream", None)
        # (stream id, device, type): a cheap identity of the current stream, no Stream object built
        self._stream_key = (lambda: get(index)) if get is not None else (lambda: torch.cuda.current_stream(device))

    # -- gathering (hot path) -------------------------------------------------------------------

    def add(self, scalars: Any, vectors: Any, count: int, resolver: Resolver, context: Any) -> None:
        """Keep a readout's device tensors (0-d ``scalars`` or 1-d ``vectors``, ``count`` values) until the seal."""
        key = self._stream_key()
        if self.entries and key != self.stream_key:
            self.seal()
        if len(self.scalars) + self.vector_len + count > self.capacity:
            self.seal()
        if not self.entries and key != self.stream_key:
            self.stream_key = key
            self.stream = self._current_stream(self.device)
        if scalars is not None:
            self.entries.append((False, len(self.scalars), count, resolver, context))
            self.scalars.extend(scalars)
        else:
            self.entries.append((True, self.vector_len, count, resolver, context))
            self.vectors.extend(vectors)
            self.vector_len += count
        self.stats.pending += 1

    # -- sealing and polling (flush) ------------------------------------------------------------

    def seal(self) -> None:
        """Gather the batch into the staging buffer (one stack, one cat) and queue its copy into a
        pinned row, behind an event. Never waits."""
        entries = self.entries
        if not entries:
            return
        stream = self.stream
        scalars, vectors = self.scalars, self.vectors
        n0 = len(scalars)
        used = n0 + self.vector_len
        self.entries, self.scalars, self.vectors, self.vector_len = [], [], [], 0
        if self.free:
            row = self.free.popleft()
        else:
            self.poll()
            if self.free:
                row = self.free.popleft()
            else:
                row, _, _, dropped = self.sealed.popleft()
                self.stats.dropped += len(dropped)
                self.stats.pending -= len(dropped)
                if self.row_stream[row] != stream:
                    stream.wait_event(self.events[row])
        torch = self.torch
        if self._stream_key() == self.stream_key:  # the batch's stream is the current one (the usual case)
            with torch.no_grad():
                event = self._gather(stream, row, scalars, vectors, n0, used)
        else:
            with torch.cuda.stream(stream), torch.no_grad():
                event = self._gather(stream, row, scalars, vectors, n0, used)
        self.row_stream[row] = stream
        self.sealed.append((row, used, n0, entries))
        self.stage_free_event, self.stage_free_stream = event, stream
        self.stats.batches += 1

    def _gather(self, stream: Any, row: int, scalars: list, vectors: list, n0: int, used: int) -> Any:
        """On ``stream`` (the current stream): stack and cat the batch into the staging buffer, queue
        its copy into pinned ``row``, and record the row's event after it."""
        torch = self.torch
        if self.stage_free_event is not None and self.stage_free_stream != stream:
            stream.wait_event(self.stage_free_event)
        stage = self.stage
        if n0:
            torch.stack(scalars, out=stage[:n0])  # any float dtype in, float32 out
        if vectors:
            torch.cat(vectors, out=stage[n0:used])
        self.rows[row][:used].copy_(stage[:used], non_blocking=True)
        event = self.events[row]
        event.record(stream)
        return event

    def poll(self) -> int:
        """Resolve every sealed row whose copy has landed; return how many readouts. Never waits."""
        sealed = self.sealed
        resolved = 0
        for _ in range(len(sealed)):
            item = sealed.popleft()
            row = item[0]
            try:
                ready = self.events[row].query()
            except Exception as exc:  # a CUDA error surfaced here: the batch is lost, not raised
                self.free.append(row)
                self.stats.pending -= len(item[3])
                self.stats.dropped += len(item[3])
                self._on_error("query", exc)
                continue
            if not ready:
                sealed.append(item)
                continue
            values = self.rows[row][: item[1]].tolist()
            self.free.append(row)
            self.stats.pending -= len(item[3])
            n0 = item[2]
            for is_vector, start, count, resolver, context in item[3]:
                if is_vector:
                    start += n0
                _resolve(resolver, values[start : start + count], context, self.stats, self._on_error)
            resolved += len(item[3])
        return resolved

    def drain(self, timeout_s: float) -> int:
        self.seal()
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll()
            if not self.sealed or time.monotonic() >= deadline:
                return sum(len(item[3]) for item in self.sealed)
            time.sleep(0.0005)


def _resolve(resolver: Resolver, values: list, context: Any, stats: CollectorStats,
             on_error: Callable[[str, BaseException], None]) -> None:
    stats.resolved += 1
    try:
        resolver(values, context)
    except Exception as exc:
        on_error(f"resolve:{getattr(resolver, '__qualname__', resolver)}", exc)


class Readouts:
    """The device readouts of one emitter, per CUDA device (created on first use).

    Args:
        slots: pinned ring rows per device: sealed batches in flight before the oldest is dropped.
        stats: where drops, resolutions and errors are counted.
        on_error: ``on_error(key, exc)`` counts a failure and logs it once.
    """

    def __init__(self, slots: int, stats: CollectorStats, on_error: Callable[[str, BaseException], None],
                 capacity: int = MIN_CAPACITY) -> None:
        if slots < 1:
            raise ValueError(f"readout slots must be >= 1, got {slots}")
        self.slots = slots
        self.capacity = capacity
        self.stats = stats
        self._on_error = on_error
        self._devices: dict[Any, _DeviceReadouts] = {}
        self._retired: list[_DeviceReadouts] = []

    def add(self, device: Any, count: int, resolver: Resolver, context: Any, *,
            scalars: list | None = None, vectors: list | None = None) -> None:
        """Hand over a readout: ``count`` values in 0-d ``scalars`` or 1-d ``vectors`` on a CUDA ``device``.

        The tensors must not change before the next ``flush()`` (collectors pass fresh results of
        their own reductions). Their values reach ``resolver`` after a later ``flush()``.
        """
        self.stats.submitted += 1
        per_device = self._devices.get(device)
        if per_device is None or count > per_device.capacity:
            per_device = self._new_device(device, count, per_device)
        per_device.add(scalars, vectors, count, resolver, context)

    def _new_device(self, device: Any, count: int, old: _DeviceReadouts | None) -> _DeviceReadouts:
        """Buffers for ``device`` wide enough for ``count`` (allocated once; a wider readout retires the
        old buffers, which are still polled until their last batch is read)."""
        if count > MAX_CAPACITY:
            raise ValueError(f"a readout of {count} values exceeds the widest accepted ({MAX_CAPACITY})")
        capacity = self.capacity
        while capacity < 2 * count:
            capacity <<= 1
        if old is not None:
            old.seal()
            self._retired.append(old)
        per_device = self._devices[device] = _DeviceReadouts(torch_module(), device, capacity, self.slots, self.stats, self._on_error)
        return per_device

    def resolve_now(self, values: list, resolver: Resolver, context: Any) -> None:
        """Values already on the host: resolve at once."""
        self.stats.submitted += 1
        _resolve(resolver, values, context, self.stats, self._on_error)

    @property
    def pending(self) -> int:
        return self.stats.pending

    def poll(self) -> int:
        """Seal what was staged since the last call and resolve every readout that is ready. Never waits."""
        resolved = 0
        if self._retired:
            for old in self._retired:
                resolved += old.poll()
            self._retired = [old for old in self._retired if old.sealed]
        for per_device in self._devices.values():
            try:
                per_device.seal()
            except Exception as exc:
                self._on_error("seal", exc)
            resolved += per_device.poll()
        return resolved

    def drain(self, timeout_s: float) -> int:
        """Seal and poll until nothing is in flight or ``timeout_s`` passed (``close()``, not the hot path).

        Returns the number of readouts still in flight (abandoned, not counted as dropped).
        """
        deadline = time.monotonic() + timeout_s
        left = 0
        for per_device in [*self._retired, *self._devices.values()]:
            left += per_device.drain(max(0.0, deadline - time.monotonic()))
        return left

    def abandon(self) -> list[Any]:
        """Forget every device's buffers without touching CUDA (after a fork); the caller keeps them alive."""
        kept = [*self._retired, *self._devices.values()]
        self._devices, self._retired = {}, []
        self.stats.pending = 0
        return kept
