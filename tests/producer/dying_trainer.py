"""A trainer that starts its own sidecar and dies without a word: ``python dying_trainer.py MODE LOG_DIR``.

It emits ``lstm_health`` for steps 0-4 and a NaN at step 5, waits until its sidecar has printed the
``non_finite`` alert about it (so everything it sent was received), prints one JSON line (its pid,
the sidecar's pid, the sidecar's private socket directory) and then ends the way ``MODE`` says:

- ``exit``: ``os._exit(1)`` (no atexit hook, no ``run_end``);
- ``wait``: blocks until it is killed (the test sends SIGKILL);
- ``forget``: started the sidecar with ``spawn_consumer`` itself, closes its emitter (``run_end``)
  but never the sidecar, and returns: a normal exit that leaves the sidecar to notice it.

``python dying_trainer.py supervise MODE LOG_DIR`` runs the trainer as its child while being a
child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``), so the sidecar, orphaned when the trainer dies,
becomes its child and its exit status can be read. It passes the trainer's line on, then prints
``{"trainer_status": ...}`` once the trainer is reaped and ``{"sidecar_status": ..., "sidecar_after_s": ...}``
once the sidecar is (seconds from the trainer's reaping to the sidecar's exit; the sidecar is
killed after ``SIDECAR_WAIT_S`` and reported with status ``"timeout"``).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

SIDECAR_WAIT_S = 60.0
"""Hang guard of the supervisor (not a timing assertion: the tests state their own bound)."""


def trainer(mode: str, log_dir: str) -> None:
    from simic.producer import Emitter, spawn_consumer

    if mode == "forget":
        sidecar = spawn_consumer(log_dir=log_dir)
        emitter = Emitter(sidecar.endpoint, run_id=f"dying-{mode}")
    else:
        emitter = Emitter(None, run_id=f"dying-{mode}", spawn_consumer={"log_dir": log_dir})
        sidecar = emitter.sidecar
    for step in range(5):
        emitter.emit("lstm_health", step=step, h_norm=1.0 + step)
    emitter.emit("lstm_health", step=5, h_norm=math.nan, has_nan=True)
    emitter.flush()
    if sidecar.wait_for_line("non_finite", timeout_s=60.0) is None:
        print(json.dumps({"error": "the sidecar never reported the NaN", "lines": sidecar.lines}), flush=True)
        os._exit(2)
    print(json.dumps({
        "trainer_pid": os.getpid(),
        "sidecar_pid": sidecar.pid,
        "private_dir": str(Path(sidecar.endpoint[len("ipc://"):]).parent),
        "run_id": emitter.run_id,
        "session": emitter.session,
    }), flush=True)
    if mode == "exit":
        os._exit(1)
    if mode == "forget":
        emitter.close()
        return
    while True:
        signal.pause()


def _say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def supervise(mode: str, log_dir: str) -> None:
    PR_SET_CHILD_SUBREAPER = 36
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        _say(error="prctl(PR_SET_CHILD_SUBREAPER) failed")
        return
    child = subprocess.Popen([sys.executable, __file__, mode, log_dir], stdout=subprocess.PIPE, text=True)
    line = child.stdout.readline()
    sys.stdout.write(line)
    sys.stdout.flush()
    info = json.loads(line) if line.startswith("{") else {}
    status = child.wait()
    reaped = time.monotonic()
    _say(trainer_status=status)
    sidecar = info.get("sidecar_pid")
    if not sidecar:
        return
    # The trainer is reaped: its orphaned sidecar is our child now. Wait for its exit (a pidfd), bounded.
    fd = os.pidfd_open(sidecar)
    try:
        ready, _, _ = select.select([fd], [], [], SIDECAR_WAIT_S)
    finally:
        os.close(fd)
    if not ready:
        os.kill(sidecar, signal.SIGKILL)
        os.waitpid(sidecar, 0)
        _say(sidecar_status="timeout", sidecar_after_s=time.monotonic() - reaped)
        return
    after = time.monotonic() - reaped
    _, raw = os.waitpid(sidecar, 0)
    _say(sidecar_status=os.waitstatus_to_exitcode(raw), sidecar_after_s=after)


if __name__ == "__main__":
    if sys.argv[1] == "supervise":
        supervise(sys.argv[2], sys.argv[3])
    else:
        trainer(sys.argv[1], sys.argv[2])
