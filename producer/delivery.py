"""Background delivery: one daemon thread per process ("simic-batch-delivery") that sends every open
emitter's batch once its oldest event has waited ``max_batch_delay_ms``.

It lets the events emitted just before a trainer hangs (a stuck optimizer step, a deadlocked
collective) reach the consumer without another call. It sends only what was emitted (it emits nothing
itself), through :meth:`Emitter._deliver_in_background`, which takes the emitter's send lock without
waiting for it. The thread starts with the first emitter that wants it (:func:`start`), sleeps until
the next batch falls due, and ends when no open emitter wants it. Threads do not survive a fork: a
forked child's thread starts with the child's first send.

What an emitter offers the thread: ``_background``, ``_closing``, ``_socket``, ``_delay_ns``,
``_batch`` (rows whose third value is the monotonic clock at emit), ``_deliver_in_background()`` and
``_warn_once()``.

Imports: the standard library and :mod:`simic.producer.process_hooks` (the open emitters, the fork registry).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from . import process_hooks

__all__ = ["start"]

log = logging.getLogger("simic.producer")

_monotonic_ns = time.monotonic_ns

_WAKE_MIN_NS = 500_000
"""Shortest sleep of the delivery thread (also how early a batch may be taken before it is due)."""
_WAKE_MAX_NS = 3600 * 10**9
"""Longest sleep (a huge ``max_batch_delay_ms``); a new emitter wakes the thread anyway."""
_BUSY_RETRY_NS = 1_000_000
"""Look again this soon at an emitter whose trainer held the send lock."""

_delivery_lock = threading.Lock()  # guards _delivery_thread
_delivery_wake = threading.Event()  # set: look at the emitters now (a new one, a shorter delay)
_delivery_thread: threading.Thread | None = None


def start() -> None:
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


def _background_emitters() -> list[Any]:
    return [e for e in process_hooks.open_emitters() if e._background and not e._closing]


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
                    if not _background_emitters():  # re-checked under the lock start() takes
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


def _deliver_due(emitters: list[Any]) -> int:
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


def _renew_after_fork() -> None:
    # Threads do not survive fork: the child's delivery thread starts with its first send. Its lock and
    # event are new: the parent's thread may have held them at the fork.
    global _delivery_lock, _delivery_wake, _delivery_thread
    _delivery_lock = threading.Lock()
    _delivery_wake = threading.Event()
    _delivery_thread = None


process_hooks.after_fork_in_child(_renew_after_fork)  # registered at import: before any emitter's
