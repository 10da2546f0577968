"""The producer's process hooks: what happens to emitters at exit, on an uncaught exception, on SIGTERM
and in the child of ``os.fork()``. The only module of ``simic.producer`` that installs such hooks.

::

    interpreter exit (atexit)      -> every open emitter: close("exit")
    uncaught exception (excepthook) -> every open emitter: close("error" | "interrupted", the exception),
                                       then the previous hook (the usual traceback)
    SIGTERM (only where the program has no handler of its own)
                                   -> every open emitter: close("interrupted", "SIGTERM"), then die as by default
    os.fork(), in the child        -> every registered callback, in registration order
                                      (the delivery thread's state first, then each emitter)

Two registries, both here:

- the open emitters (:func:`add_open`, :func:`discard_open`), held strongly until ``close()``: an
  emitter the trainer dropped without closing (a local of a ``main()`` that returned) must still send
  its pending events and ``run_end`` at exit;
- the fork registry (:func:`after_fork_in_child`): the callbacks a forked child runs before anything
  else, held weakly when they are bound methods, so an emitter that was garbage collected is forgotten.

The exit hooks are installed by the first emitter whose settings ask for them
(:func:`install_exit_hooks`); the at-fork handler once, at import. Nothing here raises at exit.

Imports: the standard library only (``emitter`` and ``delivery`` import this module, never the reverse).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import weakref
from typing import Any, Callable

__all__ = [
    "add_open",
    "discard_open",
    "open_emitters",
    "install_exit_hooks",
    "after_fork_in_child",
    "keep_inherited",
]

# -- open emitters ------------------------------------------------------------------------------------

_open: set[Any] = set()
"""Emitters not yet closed (``close(status, error)`` is all this module calls on them)."""


def add_open(emitter: Any) -> None:
    """``emitter`` is open: close it at exit (when the exit hooks are installed) and keep it alive until then."""
    _open.add(emitter)


def discard_open(emitter: Any) -> None:
    """``emitter`` closed: forget it."""
    _open.discard(emitter)


def open_emitters() -> list[Any]:
    """The open emitters now (a copy; safe to call from another thread)."""
    for _ in range(3):
        try:
            return list(_open)
        except RuntimeError:  # the set changed while being copied: copy again
            continue
    return []


def _close_all(status: str, error: str | None = None) -> None:
    for emitter in open_emitters():
        try:
            emitter.close(status, error)
        except Exception:  # at exit, nothing may propagate
            pass


# -- exit, uncaught exceptions, SIGTERM ---------------------------------------------------------------

_exit_hooks_installed = False
_exit_hooks_lock = threading.Lock()


def _on_sigterm(signum, frame) -> None:
    """SIGTERM (a scheduler's preemption, ``kill``): send what is pending and run_end, then die as the
    default action would. Installed only where the program had no handler of its own."""
    _close_all("interrupted", "SIGTERM")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _excepthook(exc_type, exc, tb) -> None:
    status = "interrupted" if issubclass(exc_type, KeyboardInterrupt) else "error"
    _close_all(status, f"{exc_type.__name__}: {exc}"[:4096])
    _previous_excepthook(exc_type, exc, tb)


_previous_excepthook = sys.excepthook


def install_exit_hooks() -> None:
    """Close the open emitters at interpreter exit, on an uncaught exception and on SIGTERM (the last
    only from the main thread, and only where the program has no SIGTERM handler). Once per process."""
    global _exit_hooks_installed, _previous_excepthook
    with _exit_hooks_lock:
        if _exit_hooks_installed:
            return
        _exit_hooks_installed = True
        atexit.register(_close_all, "exit")
        _previous_excepthook = sys.excepthook
        sys.excepthook = _excepthook
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)


# -- fork ---------------------------------------------------------------------------------------------

_fork_callbacks: list[Callable[[], Callable[[], None] | None]] = []
"""The fork registry: in registration order, a reference to each callback (call it to get the callback,
None once its object is gone)."""
_fork_lock = threading.Lock()
_inherited: list[Any] = []
"""What a forked child inherited and must neither touch nor free (the parent's ZeroMQ and CUDA objects)."""


def after_fork_in_child(callback: Callable[[], None]) -> None:
    """Run ``callback()`` in the child after ``os.fork()``, before the child's own code goes on.

    A bound method is held weakly (registering an emitter's method does not keep the emitter alive); a
    plain function strongly. Callbacks run in registration order and must not raise (an exception is
    swallowed, the others still run).
    """
    ref: Callable[[], Callable[[], None] | None]
    if hasattr(callback, "__self__") and hasattr(callback, "__func__"):
        ref = weakref.WeakMethod(callback)  # type: ignore[arg-type]
    else:
        def ref() -> Callable[[], None]:
            return callback
    with _fork_lock:
        _fork_callbacks[:] = [r for r in _fork_callbacks if r() is not None]
        _fork_callbacks.append(ref)


def keep_inherited(*objects: Any) -> None:
    """In a forked child: keep the parent's objects (sockets, CUDA events) alive and untouched for good.
    Freeing them would act on the parent's resources (a ZeroMQ context's threads do not survive a fork)."""
    _inherited.append(objects)


def _in_forked_child() -> None:
    global _fork_lock, _exit_hooks_lock
    # The parent's other threads may have held these at the fork; none of them runs in the child.
    _fork_lock = threading.Lock()
    _exit_hooks_lock = threading.Lock()
    for ref in list(_fork_callbacks):
        callback = ref()
        if callback is None:
            continue
        try:
            callback()
        except Exception:  # a forked child must go on (a data-loader worker that never emits)
            pass


os.register_at_fork(after_in_child=_in_forked_child)
