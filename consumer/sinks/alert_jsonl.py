"""Alerts as JSON lines in ``alerts.jsonl`` (the same records ``replay --json`` prints)."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from ..pipeline.alerts import alert_record, to_json_line
from ..pipeline.contract import Batch, Stage

__all__ = ["JsonlAlertSink"]


class JsonlAlertSink(Stage):
    """Appends one JSON object per alert to a file, flushed per batch so a reader sees it at once."""

    name = "alert_jsonl"
    quiet_while_catching_up = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    async def consume(self, batch: Batch) -> None:
        if batch.alerts and self._file is not None:
            for alert in batch.alerts:
                self._file.write(to_json_line(alert_record(alert)) + "\n")
            self._file.flush()

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
