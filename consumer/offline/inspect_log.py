"""``simic-consumer inspect``: what a log holds, without running the analysis."""

from __future__ import annotations

import datetime as _dt
from typing import Any

__all__ = ["format_summary"]


def _when(ns: int | None) -> str:
    if ns is None:
        return "?"
    return _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _counts(counter: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in counter.items()) or "none"


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable text of a replay/inspect summary."""
    lines = [
        f"messages {summary['messages']}, events {summary['events']}, lost {summary['lost']}",
        f"events by kind: {_counts(summary['events_by_kind'])}",
        f"rejected messages: {_counts(summary['rejected_messages'])}",
        f"rejected events: {_counts(summary['rejected_events'])}",
    ]
    for run_id, sessions in summary["runs"].items():
        lines.append(f"run {run_id}")
        for s in sessions:
            transit = "" if s["lost_in_transit"] is None else f", lost in transit {s['lost_in_transit']}"
            if s.get("removed_by_retention"):
                transit += f"; {s['removed_by_retention']} earlier events removed by retention"
            lines.append(
                f"  rank {s['rank']} session {s['session']} ({s['status']}; host {s['host'] or '?'}, pid {s['pid'] or '?'}): "
                f"{s['received']} events, steps {s['first_step']}..{s['last_step']}, "
                f"{_when(s['first_recv_ns'])} .. {_when(s['last_recv_ns'])}, "
                f"lost {s['lost']} (dropped by producer {s['dropped_by_producer']}{transit}), duplicates {s['duplicates']}"
            )
            lines.append(f"    {_counts(s['events_by_kind'])}")
    retention = summary.get("retention") or {}
    if retention.get("removed_segments"):
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(retention["by_reason"].items()))
        lines.append(
            f"removed by retention: {retention['removed_segments']} segments ({retention['first_removed']} .. {retention['last_removed']}), "
            f"{retention['removed_bytes'] / 1e6:.1f} MB, last written {_when(retention['last_write_ns'])} ({reasons}); "
            f"{summary.get('removed_by_retention', 0)} events of sessions that go on in the log were in them"
        )
    else:
        lines.append("removed by retention: nothing")
    problems = summary.get("log_problems", [])
    if problems:
        lines.append("log problems:")
        lines.extend(f"  {p['kind']} in {p['path']} at offset {p['offset']} ({p['length']} bytes): {p['detail']}" for p in problems)
    else:
        lines.append("log problems: none (no torn tail)")
    return "\n".join(lines)
