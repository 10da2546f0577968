"""A tiny trainer for the process-hook tests: ``python fake_trainer.py <mode> <endpoint>``.

It emits three ``lstm_health`` events (steps 0-2, left pending in the batch) and then ends the way
``mode`` says. Lines on stdout report what the tests cannot see on the wire (the forked child's pid).
"""

from __future__ import annotations

import math
import os
import sys

from simic.producer import Emitter, EmitterSettings


def fork_child(emitter: Emitter, mode: str) -> None:
    """In the forked child: emit on the child's own session (with a timer too), or exit at once without emitting."""
    if mode == "fork_collectors":
        with emitter.timer("child", step=100, device="cpu"):
            pass
        emitter.flush()
        emitter.close()
        os._exit(0)
    if mode == "fork":
        for step in range(100, 103):
            emitter.emit("heartbeat", step=step)
        emitter.close()
        os._exit(0)
    sys.exit(0)  # fork_silent: a normal interpreter exit (atexit hooks run) that never emitted


def main(mode: str, endpoint: str) -> None:
    settings = EmitterSettings(linger_ms=5000, heartbeat_interval_s=0, max_batch_delay_ms=1e9)
    emitter = Emitter(endpoint, run_id=f"fake-{mode}", settings=settings)
    for step in range(3):
        emitter.emit("lstm_health", step=step, h_norm=float(step))

    if mode == "crash":
        emitter.emit("lstm_health", step=3, h_norm=math.nan, has_nan=True)  # the event that shows the fault
        raise FloatingPointError("NaN in LSTM state at step 3")
    if mode == "interrupt":
        raise KeyboardInterrupt
    if mode == "exit":
        return  # no close(): the interpreter's exit sends run_end
    if mode == "sys_exit":
        sys.exit(3)
    if mode == "fork_collectors":  # a timing measured, not yet flushed, at the fork: the parent's, not the child's
        with emitter.timer("parent", step=2, device="cpu"):
            pass
    if mode in ("fork", "fork_silent", "fork_collectors"):
        pid = os.fork()
        if pid == 0:
            fork_child(emitter, mode)
        _, status = os.waitpid(pid, 0)
        print(f"child {pid} {os.waitstatus_to_exitcode(status)}", flush=True)
        for step in range(10, 13):
            emitter.emit("lstm_health", step=step, h_norm=float(step))
        emitter.close()
        return
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
