"""Making alerts and writing them as JSON.

An alert is an event (``simic.schemas.Alert``) about the run, rank, session and step of the event
that fired it, stamped with that event's clock: analysis runs on event time, so a replay of a log
makes the same alerts as the live run did. The JSON form is shared by ``alerts.jsonl`` and
``simic-consumer replay --json``; non-finite floats become the strings "NaN", "Infinity",
"-Infinity" so every line is strict JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from simic.schemas.models import Alert, Event

__all__ = ["AlertMaker", "alert_record", "to_json_line", "json_safe"]


class AlertMaker:
    """Builds alerts; numbers them 0, 1, 2, ... in the order they are raised."""

    def __init__(self) -> None:
        self.count = 0

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
        )
        self.count += 1
        return alert


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
    }


def to_json_line(record: Mapping[str, Any]) -> str:
    return json.dumps(json_safe(dict(record)), allow_nan=False, separators=(",", ":"))
