"""Helpers for testing code that uses simic: a recording sink.

    sink = RecordingSink()
    pipeline = build_pipeline(config, console=False, extra_sinks=[sink])
    ...
    assert [a.rule for a in sink.alerts] == ["non_finite"]
"""

from __future__ import annotations

from simic.schemas.models import Alert, Event

from .pipeline import Batch, Stage

__all__ = ["RecordingSink"]


class RecordingSink(Stage):
    """Keeps every batch it sees, with its events and alerts, in memory."""

    name = "recording"

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.closed = False

    async def consume(self, batch: Batch) -> None:
        self.batches.append(batch)

    async def close(self) -> None:
        self.closed = True

    @property
    def events(self) -> list[Event]:
        return [event for batch in self.batches for event in batch.events]

    @property
    def alerts(self) -> list[Alert]:
        return [alert for batch in self.batches for alert in batch.alerts]

    def reset(self) -> None:
        self.batches.clear()
