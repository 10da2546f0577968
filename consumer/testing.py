"""Helpers for testing code that uses simic: a recording sink.

    sink = RecordingSink()
    pipeline = build_pipeline(config, console=False, extra_sinks=[sink])
    ...
    assert [a.rule for a in sink.alerts] == ["non_finite"]

``replay`` collects its alerts with the same sink (``RecordingSink(alerts_only=True)``).
"""

from __future__ import annotations

from simic.schemas.models import Alert, Event

from .pipeline.contract import Batch, SyncStage

__all__ = ["RecordingSink"]


class RecordingSink(SyncStage):
    """Keeps every batch it sees, with its events and alerts, in memory.

    Args:
        alerts_only: keep only the alerts (what a replay of a long log needs), not the batches;
            :attr:`batches` then stays empty.
    """

    name = "recording"

    def __init__(self, *, alerts_only: bool = False) -> None:
        self.batches: list[Batch] = []
        self.closed = False
        self._alerts: list[Alert] | None = [] if alerts_only else None
        if alerts_only:
            self.consume_now = self._keep_alerts  # chosen once: the pipeline calls it for every batch

    def consume_now(self, batch: Batch) -> None:
        self.batches.append(batch)

    def _keep_alerts(self, batch: Batch) -> None:
        self._alerts.extend(batch.alerts)

    async def close(self) -> None:
        self.closed = True

    @property
    def events(self) -> list[Event]:
        return [event for batch in self.batches for event in batch.events]

    @property
    def alerts(self) -> list[Alert]:
        if self._alerts is not None:
            return self._alerts
        return [alert for batch in self.batches for alert in batch.alerts]

    def reset(self) -> None:
        self.batches.clear()
        if self._alerts is not None:
            self._alerts.clear()
