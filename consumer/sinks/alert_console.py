"""Alerts as human lines on the console."""

from __future__ import annotations

import sys
from typing import TextIO

from ..pipeline import Batch, Stage

__all__ = ["ConsoleAlertSink", "format_alert"]


def format_alert(alert) -> str:
    state = "CLEARED" if alert.cleared else alert.severity.upper()
    return f"[{state}] {alert.rule} run={alert.run_id} rank={alert.rank} step={alert.step}: {alert.message}"


class ConsoleAlertSink(Stage):
    """Prints one line per alert (``[CRITICAL] non_finite run=... step=...: ...``)."""

    name = "alert_console"

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    async def consume(self, batch: Batch) -> None:
        if batch.alerts and not batch.catching_up:
            stream = self.stream or sys.stdout
            for alert in batch.alerts:
                print(format_alert(alert), file=stream, flush=True)
