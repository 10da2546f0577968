"""Alerts as human lines on the console."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ..pipeline.contract import Batch, Stage

__all__ = ["ConsoleAlertSink", "format_alert"]


def format_alert(alert) -> str:
    """``[SEVERITY] rule run=... rank=... step=...: message (received HH:MM:SS.mmm)`` (the local time the
    evidence arrived; left out when unknown)."""
    state = "CLEARED" if alert.cleared else alert.severity.upper()
    line = f"[{state}] {alert.rule} run={alert.run_id} rank={alert.rank} step={alert.step}: {alert.message}"
    received = getattr(alert, "received_at", None)
    if received is not None:
        line += f" (received {time.strftime('%H:%M:%S', time.localtime(received))}.{int(received * 1000) % 1000:03d})"
    return line


class ConsoleAlertSink(Stage):
    """Prints one line per alert (``[CRITICAL] non_finite run=... step=...: ... (received ...)``)."""

    name = "alert_console"
    quiet_while_catching_up = True

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    async def consume(self, batch: Batch) -> None:
        if batch.alerts:
            stream = self.stream or sys.stdout
            for alert in batch.alerts:
                print(format_alert(alert), file=stream, flush=True)
