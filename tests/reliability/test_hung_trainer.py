"""A trainer that hangs right after emitting, with a real `simic-consumer run` daemon: its last events,
the most valuable evidence of what went wrong, still reach the consumer's log.

The bound is the emitter's ``max_batch_delay_ms`` (100 ms by default, plus thread scheduling): the
background delivery thread sends a batch once its oldest event has waited that long. The test does not
time it; it waits for the daemon's own signal (the alert the last event raises, and the log's counts)
with the usual hang guard.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from .conftest import WAIT_S, consumer_command

RUN_ID = "hung-trainer"
STEPS = 5

TRAINER = """
import math, threading
from simic.producer import Emitter
emitter = Emitter(ENDPOINT, run_id=RUN_ID, heads=["slot"])
for step in range(STEPS):
    emitter.emit("lstm_health", step=step, h_norm=1.0, c_norm=1.0)
    emitter.flush()
# The last events, never flushed: the state goes NaN, then the optimizer step hangs.
emitter.emit("head_grad_norms", step=STEPS, norms={"slot": 0.5}, total=0.5)
emitter.emit("lstm_health", step=STEPS, h_norm=math.nan, c_norm=1.0, has_nan=True)
print("hanging", flush=True)
threading.Event().wait()
"""


def session_of(log_dir) -> dict | None:
    result = subprocess.run(consumer_command("inspect", str(log_dir), "--json"), capture_output=True, text=True, timeout=WAIT_S)
    if result.returncode != 0:
        return None  # no segment written yet
    sessions = json.loads(result.stdout).get("runs", {}).get(RUN_ID, [])
    return sessions[0] if sessions else None


def test_the_last_events_before_a_hang_reach_the_log(tmp_path, ipc_endpoint, daemons):
    """A trainer emits 5 flushed steps, then a head_grad_norms and a NaN lstm_health it never flushes,
    and hangs forever (``threading.Event().wait()``). Within max_batch_delay_ms (100 ms; the test waits
    up to its 60 s hang guard for the daemon's signal) both reach the daemon: the NaN raises its
    non_finite alert, and the log holds every event the trainer produced, its session still open.
    Then the test kills the trainer."""
    log_dir = tmp_path / "logs"
    daemon = daemons(ipc_endpoint, log_dir)
    trainer = subprocess.Popen([sys.executable, "-c", f"ENDPOINT, RUN_ID, STEPS = {daemon.endpoint!r}, {RUN_ID!r}, {STEPS}\n" + TRAINER],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert trainer.stdout.readline().strip() == "hanging", trainer.stderr.read() if trainer.poll() is not None else ""
        alert = daemon.wait_for("non_finite")
        assert f"step {STEPS}" in alert or str(STEPS) in alert, alert
        produced = 1 + STEPS + 2  # run_start, the flushed steps, the last two
        deadline = time.monotonic() + WAIT_S
        session = session_of(log_dir)
        while (session is None or session["received"] < produced) and time.monotonic() < deadline:
            session = session_of(log_dir)  # the daemon writes its log every 100 ms: read it again
        assert session is not None and session["received"] == produced and session["lost"] == 0, session
        assert session["status"] == "open" and session["last_step"] == STEPS, session  # no run_end: the trainer is hung
        assert trainer.poll() is None  # still hanging: nothing it called sent those events
    finally:
        trainer.kill()
        trainer.communicate(timeout=WAIT_S)
