"""Making alerts and writing them as JSON.

An alert is an event (``simic.schemas.Alert``) about the run, rank, session and step of the event
that fired it, stamped with that event's clock: analysis runs on event time, so a replay of a log
makes the same alerts as the live run did. ``received_at`` is the arrival time (consumer wall
clock, Unix seconds) of the message or clock tick that made the rule fire or clear, as the event
log keeps it: a replay reports the original time, not its own. The JSON form is shared by ``alerts.jsonl`` and
``simic-consumer replay --json``; non-finite floats become the strings "NaN", "Infinity",
"-Infinity" so every line is strict JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from simic.schemas.models import Alert, Event

from .contract import Batch, SyncStage

__all__ = ["AlertMaker", "AlertClock", "alert_record", "to_json_line", "json_safe"]


class AlertMaker:
    """Builds alerts; numbers them 0, 1, 2, ... in the order they are raised.

    ``received_ns`` is the arrival time of the batch being analysed (set by :class:`AlertClock`
    before the rules see it); every alert made is stamped with it as ``received_at``."""

    def __init__(self) -> None:
        self.count = 0
        self.received_ns: int | None = None

    def make(
        self,
        about: Event,
        rule: str,
        severity: str,
        message: str,
        values: Mapping[str, Any] | None = None,
        *,
        cleared: bool = False,
    ) -> Alert:
        alert = Alert(
            run_id=about.run_id,
            rank=about.rank,
            session=about.session,
            seq=self.count,
            clock_ns=about.clock_ns,
            step=about.step,
            rule=rule,
            severity=severity,
            message=message[:4096],
            values=dict(values or {}),
            cleared=cleared,
            received_at=None if self.received_ns is None else self.received_ns / 1e9,
        )
        self.count += 1
        return alert


class AlertClock(SyncStage):
    """First of the analysis stages: tells the rules' :class:`AlertMaker` when the batch arrived
    (live: the receive time; in replay: the one the log kept), the one place alerts get ``received_at``.

    Stateful: its checkpoint is the maker's count, so a restarted daemon numbers its alerts on."""

    name = "alert_clock"

    def __init__(self, maker: AlertMaker) -> None:
        self.maker = maker

    def consume_now(self, batch: Batch) -> None:
        self.maker.received_ns = batch.recv_ns

    def state_dict(self) -> dict[str, Any]:
        return {"alerts_made": self.maker.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.maker.count = int(state["alerts_made"])


def json_safe(value: Any) -> Any:
    """Replace non-finite floats (recursively) by their names."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def alert_record(alert: Alert) -> dict[str, Any]:
    """The stable JSON object of an alert (``"type": "alert"`` first)."""
    return {
        "type": "alert",
        "rule": alert.rule,
        "severity": alert.severity,
        "cleared": alert.cleared,
        "run_id": alert.run_id,
        "rank": alert.rank,
        "session": alert.session,
        "step": alert.step,
        "clock_ns": alert.clock_ns,
        "message": alert.message,
        "values": json_safe(alert.values),
        "received_at": alert.received_at,
    }


def to_json_line(record: Mapping[str, Any]) -> str:
    return json.dumps(json_safe(dict(record)), allow_nan=False, separators=(",", ":"))
