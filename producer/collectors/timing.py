"""Step timing that never waits: CUDA event pairs from a pool, read once ``query()`` says they are done.

::

    timer.start()  -> start_event.record(stream)       (pair taken from the pool)
    ... GPU work queued on that stream ...
    timer.stop(step) -> end_event.record(stream)        (pair joins the pending queue)
    flush()        -> end_event.query()? -> elapsed_time -> one step_timing event per step
                      (pair back to the pool); not done yet: stays pending

The time measured is GPU time between the two records on the timer's stream, which is fixed when the
timer is made (the caller's current stream unless one is given). Without CUDA, or for a timer made
with ``device="cpu"``, ``time.perf_counter_ns`` measures host time and the event says
``clock="cpu"``; such a phase also carries how much of it the thread spent waiting for a CPU
(:class:`RunQueueWait`, ``step_timing.wait_ms``), which tells other processes' load from the
trainer's own slowness. Phases with the same name at the same step add up.

Imports: ``readout`` (the counters); torch only as handed in by the caller. A :class:`Timer` reads and
sets its emitter's current step (``_step``) and reports failures through the callable it is given.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from typing import Any, Callable

from .readout import CollectorStats, current_stream

__all__ = ["Timer", "NullTimer", "Timings", "RunQueueWait"]

_perf_ns = time.perf_counter_ns
_get_ident = threading.get_ident


class _ThreadFile:
    """One thread's open statistics file; closed when the thread's local storage lets go of it."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __del__(self, _os_close: Callable[[int], None] = os.close) -> None:  # (bound now: at exit the module's names may be gone)
        try:
            _os_close(self.fd)
        except Exception:
            pass


class RunQueueWait:
    """Nanoseconds the calling thread has spent runnable but waiting for a CPU, from Linux's per-thread
    scheduler statistics (the second number of ``/proc/thread-self/schedstat``); -1 where there is no
    such file (another system). A kernel that keeps no scheduler statistics reports 0 throughout.

    One read is one ``pread`` of a file kept open per thread (a few microseconds), in the thread's local
    storage: it is closed when the thread ends. After a fork the child's threads open their own (the
    files it inherited are closed). A read that fails (a descriptor limit reached) is -1 for that read.
    """

    PATH = "/proc/thread-self/schedstat"
    __slots__ = ("available", "_local", "_pid")

    def __init__(self) -> None:
        self.available = os.path.exists(self.PATH)
        self._local = threading.local()
        self._pid = os.getpid()

    def read(self) -> int:
        if not self.available:
            return -1
        if os.getpid() != self._pid:  # a forked child: the files it inherited are its parent's threads'
            self._local, self._pid = threading.local(), os.getpid()
        local = self._local
        file = getattr(local, "file", None)
        try:
            if file is None:
                file = local.file = _ThreadFile(os.open(self.PATH, os.O_RDONLY | os.O_CLOEXEC))
            return int(os.pread(file.fd, 128, 0).split()[1])
        except (FileNotFoundError, PermissionError):
            self.available = False  # no such statistics here
            return -1
        except (OSError, ValueError, IndexError):
            local.file = None  # opened again at the next read
            return -1


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


_run_queue = RunQueueWait()


class Timings:
    """Pending and finished measurements of all timers of one emitter, and the event-pair pool.

    Args:
        max_pending: CUDA measurements in flight before the oldest is dropped (counted in
            ``stats.timers_dropped``); also the most event pairs the pool ever holds.
    """

    def __init__(self, max_pending: int, stats: CollectorStats) -> None:
        if max_pending < 1:
            raise ValueError(f"max pending timers must be >= 1, got {max_pending}")
        self.max_pending = max_pending
        self.stats = stats
        self._pool: list[tuple[Any, Any]] = []
        self._pending: deque[tuple[tuple[Any, Any], str, int]] = deque()
        self._done: list[tuple[str, int, float, str, float | None]] = []  # (name, step, ms, clock, ms waiting for a CPU)

    # -- CUDA ---------------------------------------------------------------------------------

    def take_pair(self, torch: Any) -> tuple[Any, Any]:
        if self._pool:
            return self._pool.pop()
        return (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))

    def give_back(self, pair: tuple[Any, Any]) -> None:
        self._pool.append(pair)

    def cuda_done(self, pair: tuple[Any, Any], name: str, step: int) -> None:
        """The end event was recorded: queue the pair until it can be read."""
        pending = self._pending
        pending.append((pair, name, step))
        if len(pending) > self.max_pending:
            old = pending.popleft()
            self._pool.append(old[0])
            self.stats.timers_dropped += 1

    # -- CPU ----------------------------------------------------------------------------------

    def cpu_done(self, name: str, step: int, ms: float, wait_ms: float | None) -> None:
        self._done.append((name, step, ms, "cpu", wait_ms))

    # -- resolution ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._pending)

    def all_done(self) -> bool:
        """Whether every pending measurement has reached its end event (a query, never a wait)."""
        try:
            return all(item[0][1].query() for item in self._pending)
        except Exception:
            return True

    def poll(self) -> list[tuple[str, int, float, str, float | None]]:
        """Finished measurements (name, step, ms, clock, ms waiting for a CPU or None), oldest first. Never waits."""
        pending = self._pending
        for _ in range(len(pending)):
            item = pending.popleft()
            start, end = item[0]
            try:
                if not end.query():
                    pending.append(item)
                    continue
                ms = start.elapsed_time(end)
            except Exception:  # never recorded on the GPU, or a CUDA error: lost, counted
                self.stats.timers_dropped += 1
                self._pool.append(item[0])
                continue
            self._pool.append(item[0])
            self._done.append((item[1], item[2], float(ms), "cuda_event", None))
        done, self._done = self._done, []
        return done

    def abandon(self) -> list[Any]:
        """Forget all CUDA events without touching them (after a fork)."""
        kept = [self._pool, list(self._pending)]
        self._pool, self._pending = [], deque()
        return kept


def group_by_step(done: list[tuple[str, int, float, str, float | None]]) -> list[tuple[int, str, dict[str, float], dict[str, float]]]:
    """``[(step, clock, {phase: ms}, {phase: ms waiting for a CPU})]`` in order of first appearance; equal
    phases of a step add up (a phase's wait is known only when it is known for every part of it)."""
    groups: dict[tuple[int, str], tuple[dict[str, float], dict[str, float], set[str]]] = {}
    for name, step, ms, clock, wait in done:
        group = groups.get((step, clock))
        if group is None:
            group = groups[(step, clock)] = ({}, {}, set())
        phases, waits, unknown = group
        phases[name] = phases.get(name, 0.0) + ms
        if wait is None or name in unknown:
            unknown.add(name)
            waits.pop(name, None)
        else:
            waits[name] = waits.get(name, 0.0) + wait
    return [(step, clock, phases, waits) for (step, clock), (phases, waits, _) in groups.items()]


class Timer:
    """A named phase timer: ``start()`` / ``stop(step)``, or ``with emitter.timer("update", step=s):``.

    Made by :meth:`simic.producer.Emitter.timer`; reusable (start again after stop). ``stop`` never waits:
    the measurement becomes a ``step_timing`` event at a later ``flush()``.
    """

    __slots__ = ("name", "step", "clock", "stream", "_timings", "_torch", "_pair", "_t0", "_t1", "_w0", "_w1", "_thread", "_marked",
                 "_emitter", "_failed")

    def __init__(self, name: str, timings: Timings, emitter: Any, failed: Callable[[str, BaseException], None], *,
                 step: int | None, torch: Any = None, stream: Any = None) -> None:
        self.name = name
        self.step = step
        self.stream = stream
        self.clock = "cuda_event" if stream is not None else "cpu"
        """``"cuda_event"`` (GPU time on ``stream``) or ``"cpu"`` (host time)."""
        self._timings = timings
        self._torch = torch
        self._emitter = emitter  # whose current step a stop() without a step reports, and one with a step sets
        self._failed = failed
        self._pair: tuple[Any, Any] | None = None
        self._t0 = 0
        self._t1 = 0
        self._w0 = -1  # the thread's run-queue wait (ns) at start; -1: not known
        self._w1 = -1
        self._thread = 0  # the thread that started it: a wait is the difference of one thread's counter
        self._marked = False

    def start(self) -> "Timer":
        """Mark the start (records a CUDA event on the timer's stream, or reads the host clock)."""
        try:
            if self.stream is None:
                self._w0 = _run_queue.read()
                self._thread = _get_ident()
                self._t0 = _perf_ns()
                return self
            pair = self._pair
            if pair is None:
                pair = self._pair = self._timings.take_pair(self._torch)
            pair[0].record(self.stream)
        except Exception as exc:
            self._fail(exc)
        return self

    def stop(self, step: int | None = None) -> None:
        """Mark the end of the phase for training ``step`` (default: the timer's step, else the emitter's last)."""
        try:
            if step is None:
                step = self.step
            if step is None:
                step = self._emitter._step
            elif type(step) is int:
                self._emitter._step = step  # the trainer named its step: it is the current one
            if self.stream is None:
                if self._t0:
                    t1 = _perf_ns()
                    self._timings.cpu_done(self.name, step, (t1 - self._t0) / 1e6, self._wait_until(_run_queue.read()))
                    self._t0 = 0
                return
            pair = self._pair
            if pair is None:  # stop without start: nothing to measure
                return
            self._pair = None
            pair[1].record(self.stream)
            self._timings.cuda_done(pair, self.name, step)
        except Exception as exc:
            self._fail(exc)

    def mark(self) -> None:
        """Mark where the phase may end (records the end event again, or reads the host clock); :meth:`finish`
        ends it at the last mark. A phase made of several parts whose last one is known only later (the
        optimizer steps of one update) is measured this way, as one span."""
        try:
            if self.stream is None:
                if self._t0:
                    self._t1 = _perf_ns()
                    self._w1 = _run_queue.read() if _get_ident() == self._thread else -1  # (another thread's counter: not known)
                    self._marked = True
                return
            if self._pair is not None:
                self._pair[1].record(self.stream)
                self._marked = True
        except Exception as exc:
            self._fail(exc)

    def finish(self, step: int) -> None:
        """End the phase started by :meth:`start` at the last :meth:`mark`, for training ``step``; without a mark, nothing is measured."""
        marked, self._marked = self._marked, False
        try:
            if self.stream is None:
                if marked and self._t0:
                    self._timings.cpu_done(self.name, step, (self._t1 - self._t0) / 1e6, _waited(self._w0, self._w1))
                self._t0 = 0
                return
            pair = self._pair
            if marked and pair is not None:
                self._pair = None
                self._timings.cuda_done(pair, self.name, step)
        except Exception as exc:
            self._fail(exc)

    def _wait_until(self, end_ns: int) -> float | None:
        """Milliseconds the starting thread waited for a CPU from start to ``end_ns``, read now; None when not
        known (no statistics, or the phase ended on another thread than it started on)."""
        if self._thread != _get_ident():
            return None
        return _waited(self._w0, end_ns)

    def __enter__(self) -> "Timer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _fail(self, exc: BaseException) -> None:
        self._failed(f"timer:{self.name}", exc)


def _waited(start_ns: int, end_ns: int) -> float | None:
    """Milliseconds of run-queue wait between two reads; None when either is unknown (or they went backwards)."""
    if start_ns < 0 or end_ns < start_ns:
        return None
    return (end_ns - start_ns) / 1e6


class NullTimer:
    """The :class:`Timer` interface doing nothing (telemetry off)."""

    __slots__ = ("name", "step")
    clock = "cpu"
    stream = None

    def __init__(self, name: str = "", step: int | None = None) -> None:
        self.name = name
        self.step = step

    def start(self) -> "NullTimer":
        return self

    def stop(self, step: int | None = None) -> None:
        pass

    def __enter__(self) -> "NullTimer":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def resolve_stream(device: Any, stream: Any) -> tuple[Any, Any]:
    """``(torch, stream)`` for a timer: the given stream, or the current stream of ``device``;
    ``(None, None)`` for host timing (device ``"cpu"``, or CUDA absent / torch never imported)."""
    if stream is not None:
        return torch_if_loaded() or _import_torch(), stream
    if device is not None and str(device).startswith("cpu"):
        return None, None
    torch = torch_if_loaded()
    if torch is None:
        if device is None:
            return None, None  # the trainer never imported torch: it is not timing GPU work
        torch = _import_torch()
    global _cuda_available
    if _cuda_available is None:
        _cuda_available = torch.cuda.is_available()  # asked once: the answer does not change in a process
    if not _cuda_available:
        return None, None
    return torch, current_stream(torch, None if device is None or str(device) == "cuda" else device)


_cuda_available: bool | None = None


def torch_if_loaded() -> Any:
    return sys.modules.get("torch")


def _import_torch() -> Any:
    import torch

    return torch
