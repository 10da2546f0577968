"""Reading what a real consumer recorded: its log, frame by frame, and ``simic-consumer inspect``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from simic.schemas import Event, LogReader, decode_message
from simic.schemas.eventlog import FRAME_MESSAGE

WAIT_S = 60.0
"""Hang guard for the consumer's command line (not a timing assertion)."""


def events_of(log_dir: Path, run_id: str) -> list[Event]:
    """The events of ``run_id`` in the consumer's log, in the order they were recorded."""
    events: list[Event] = []
    for frame in LogReader(log_dir):
        if frame.type == FRAME_MESSAGE:
            events += [e for e in decode_message(frame.payload).events if e.run_id == run_id]
    return events


def inspect_run(log_dir: Path, run_id: str) -> dict:
    """The one session of ``run_id`` as ``simic-consumer inspect --json`` shows it."""
    result = subprocess.run([sys.executable, "-m", "simic.consumer", "inspect", str(log_dir), "--json"],
                            capture_output=True, text=True, timeout=WAIT_S)
    assert result.returncode == 0, result.stderr
    (session,) = json.loads(result.stdout)["runs"][run_id]
    return session
